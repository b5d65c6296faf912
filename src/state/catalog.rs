//! The catalog of cloud models and the whitelist that picks from it.
//!
//! The catalog (short code, upstream id, provider, token limits, prices, temperature range,
//! whether the model wants `max_completion_tokens`) is embedded from `catalog.csv`, one model
//! a line, semicolon-separated. The whitelist (`models.csv`) names the short codes the
//! gateway offers, separated by commas and/or newlines, with `#` comments.

use serde::Serialize;

use crate::env::Env;

/// Where a model is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    Mammouth,
    Moonshot,
    Zai,
    Ollama,
    /// A llama.cpp `llama-server` that sigorest supervises (`-llama-server`); its address is
    /// known only to the supervisor (`crate::upstream::llama`).
    #[serde(rename = "llama.cpp")]
    Llama,
}

impl Provider {
    /// The cloud providers, whose keys and base URLs come from the environment.
    pub const CLOUD: [Provider; 3] = [Provider::Mammouth, Provider::Moonshot, Provider::Zai];

    /// Lower-case name, as shown in `/api/models` and logs.
    pub fn name(self) -> &'static str {
        match self {
            Provider::Mammouth => "mammouth",
            Provider::Moonshot => "moonshot",
            Provider::Zai => "zai",
            Provider::Ollama => "ollama",
            Provider::Llama => "llama.cpp",
        }
    }

    /// The variable holding its API key (Ollama needs none).
    pub fn key_env(self) -> Option<&'static str> {
        match self {
            Provider::Mammouth => Some("MAMMOUTH_API_KEY"),
            Provider::Moonshot => Some("MOONSHOT_API_KEY"),
            Provider::Zai => Some("ZAI_API_KEY"),
            Provider::Ollama | Provider::Llama => None,
        }
    }

    /// The variable that overrides its base URL, and the default base URL: the part before
    /// `/chat/completions`. A supervised llama-server has none.
    pub fn base_url_env(self) -> Option<(&'static str, &'static str)> {
        match self {
            Provider::Mammouth => Some(("MAMMOUTH_BASE_URL", "https://api.mammouth.ai/v1")),
            Provider::Moonshot => Some(("MOONSHOT_BASE_URL", "https://api.moonshot.ai/v1")),
            Provider::Zai => Some(("ZAI_BASE_URL", "https://api.z.ai/api/paas/v4")),
            Provider::Ollama => Some(("OLLAMA_HOST", "http://localhost:11434")),
            Provider::Llama => None,
        }
    }

    /// The base URL of its OpenAI-compatible API in this environment, without a trailing
    /// slash: endpoints are `{base}/chat/completions`, `{base}/embeddings`, ...
    ///
    /// For [`Provider::Llama`] this is llama-server's own default address; the gateway asks
    /// the supervisor instead, which knows the port it started it on.
    pub fn api_base(self, env: &Env) -> String {
        match self.base_url_env() {
            Some(_) if self == Provider::Ollama => {
                format!("{}/v1", ollama_base(env.get("OLLAMA_HOST")))
            }
            Some((var, default)) => {
                let base = env.get(var).unwrap_or(default).trim().trim_end_matches('/');
                base.to_string()
            }
            None => LLAMA_DEFAULT_BASE.to_string(),
        }
    }

    /// The chat-completions URL in this environment.
    pub fn chat_url(self, env: &Env) -> String {
        format!("{}/chat/completions", self.api_base(env))
    }

    /// The API key in this environment, if set, without the blanks around it (a key read
    /// from a file often ends with a line end: `export K=$(cat key)` keeps a `\r`). A key
    /// with a control character inside is not used (see [`Provider::unusable_keys`]): it
    /// would end the `Authorization` header line early.
    pub fn key(self, env: &Env) -> Option<&str> {
        self.key_env()
            .and_then(|v| env.get(v))
            .and_then(crate::env::header_key)
    }

    /// The variables of the cloud providers' keys that are set but not used (a control
    /// character inside), for a WARN at start.
    pub fn unusable_keys(env: &Env) -> Vec<&'static str> {
        Provider::CLOUD
            .into_iter()
            .filter(|p| p.key(env).is_none())
            .filter_map(Provider::key_env)
            .filter(|v| env.get(v).is_some())
            .collect()
    }

    fn from_key_env(var: &str) -> Option<Provider> {
        Provider::CLOUD
            .into_iter()
            .find(|p| p.key_env() == Some(var))
    }
}

/// Where llama-server listens when nobody says otherwise.
const LLAMA_DEFAULT_BASE: &str = "http://127.0.0.1:8080/v1";

/// `OLLAMA_HOST` as Ollama itself reads it — `host`, `host:port`, `:port`, `http://host:port` —
/// turned into a base URL without a trailing slash (`http://localhost:11434` when unset). An
/// empty host (`:11434`) is this machine, `127.0.0.1`, as for Ollama; an empty port the
/// default one.
pub fn ollama_base(host: Option<&str>) -> String {
    let host = host
        .map(str::trim)
        .filter(|h| !h.is_empty())
        .unwrap_or("localhost:11434");
    let (scheme, rest) = match host.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ("http".to_string(), host),
    };
    let rest = rest.trim_end_matches('/');
    let authority = rest.split('/').next().unwrap_or(rest);
    let path = &rest[authority.len()..];
    let default_port = if scheme == "https" { "443" } else { "11434" };
    // A bare IPv6 address (`::1`) has no port: it is bracketed and given the default one.
    if !authority.starts_with('[') && authority.matches(':').count() > 1 {
        return format!("{scheme}://[{authority}]:{default_port}{path}");
    }
    // A port is the part after the last ':' when it is all digits (or empty) and, for a
    // bracketed IPv6 address, the ':' comes after the closing bracket.
    let (name, port) = match authority.rfind(':') {
        Some(i)
            if authority[i + 1..].bytes().all(|b| b.is_ascii_digit())
                && (!authority.starts_with('[') || authority[..i].ends_with(']')) =>
        {
            (&authority[..i], &authority[i + 1..])
        }
        _ => (authority, ""),
    };
    let name = if name.is_empty() { "127.0.0.1" } else { name };
    let port = if port.is_empty() { default_port } else { port };
    format!("{scheme}://{name}:{port}{path}")
}

/// One model and its facts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Model {
    /// Short code clients use (`gpt41`).
    pub short: String,
    /// The id the provider knows (`gpt-4.1`).
    pub id: String,
    pub provider: Provider,
    /// Context window, in tokens (0: unknown).
    pub context: u64,
    /// Output limit, in tokens (0: unknown, no clamp).
    pub max_output: u64,
    /// $ per million input tokens.
    pub input_price: f64,
    /// $ per million output tokens.
    pub output_price: f64,
    pub min_temp: f64,
    pub max_temp: f64,
    /// Wants `max_completion_tokens` instead of `max_tokens` (GPT-5, o-series).
    pub completion_tokens: bool,
    /// An embedding model (its catalog endpoint is `…/embeddings`): served by
    /// `/v1/embeddings`, refused by the chat endpoints.
    pub embedding: bool,
}

impl Model {
    /// A model served on this network (Ollama, llama-server): free, temperature 0..2, no
    /// output clamp, chat or embeddings as its server can (it answers whether it can).
    pub fn local(short: &str, id: &str, provider: Provider, context: u64) -> Model {
        Model {
            short: short.to_string(),
            id: id.to_string(),
            provider,
            context,
            max_output: 0,
            input_price: 0.0,
            output_price: 0.0,
            min_temp: 0.0,
            max_temp: 2.0,
            completion_tokens: false,
            embedding: false,
        }
    }

    /// Whether the upstream is a Claude model (for Anthropic prompt caching).
    pub fn is_claude(&self) -> bool {
        self.id.to_ascii_lowercase().contains("claude")
    }
}

/// Finds a model by the name a client gave, the one way sigorest does it everywhere (the
/// catalog, the listed models, `sigoe`'s lists): a short code first, then an upstream id,
/// ignoring case and surrounding blanks. (Ollama's own names, with their `:latest` tags,
/// are looked up by [`crate::upstream::ollama`].)
pub fn find<'a, T>(items: &'a [T], name: &str, model: impl Fn(&T) -> &Model) -> Option<&'a T> {
    let name = name.trim();
    items
        .iter()
        .find(|t| model(t).short.eq_ignore_ascii_case(name))
        .or_else(|| {
            items
                .iter()
                .find(|t| model(t).id.eq_ignore_ascii_case(name))
        })
}

/// The catalog: every model sigorest knows of.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    models: Vec<Model>,
}

const EMBEDDED: &str = include_str!("catalog.csv");

impl Catalog {
    /// The catalog compiled into the binary.
    pub fn embedded() -> Catalog {
        // The embedded text is checked by a unit test; a broken line cannot reach a user.
        Catalog::parse(EMBEDDED).unwrap_or_default()
    }

    /// Parses the semicolon format: `id;short;endpoint;key_env;max_input;max_output;
    /// input_cost;output_cost;min_temp;max_temp;requires_completion_tokens`.
    pub fn parse(text: &str) -> Result<Catalog, String> {
        let mut models = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let model = parse_line(line).map_err(|e| format!("catalog line {}: {e}", n + 1))?;
            models.push(model);
        }
        Ok(Catalog { models })
    }

    /// Every model, in catalog order.
    pub fn all(&self) -> &[Model] {
        &self.models
    }

    /// A model by short code or upstream id, case-insensitively (see [`find`]).
    pub fn get(&self, name: &str) -> Option<&Model> {
        find(&self.models, name, |m| m)
    }

    /// The models a whitelist names, in whitelist order, and the codes it names that the
    /// catalog does not know.
    pub fn select(&self, codes: &[String]) -> (Vec<Model>, Vec<String>) {
        let mut chosen: Vec<Model> = Vec::new();
        let mut unknown = Vec::new();
        for code in codes {
            match self.get(code) {
                Some(m) if !chosen.iter().any(|c| c.short == m.short) => chosen.push(m.clone()),
                Some(_) => {}
                None => unknown.push(code.clone()),
            }
        }
        (chosen, unknown)
    }
}

fn parse_line(line: &str) -> Result<Model, String> {
    let f: Vec<&str> = line.split(';').map(str::trim).collect();
    if f.len() < 10 {
        return Err(format!("expected 11 fields, found {}", f.len()));
    }
    let num = |i: usize, what: &str| -> Result<f64, String> {
        if f[i].is_empty() {
            return Ok(0.0);
        }
        f[i].parse::<f64>()
            .map_err(|_| format!("{what} '{}' is not a number", f[i]))
    };
    let int = |i: usize, what: &str| -> Result<u64, String> {
        if f[i].is_empty() {
            return Ok(0);
        }
        f[i].parse::<u64>()
            .map_err(|_| format!("{what} '{}' is not a whole number", f[i]))
    };
    let provider = if f[3].is_empty() {
        Provider::Ollama
    } else {
        Provider::from_key_env(f[3]).ok_or_else(|| format!("unknown key variable '{}'", f[3]))?
    };
    if f[0].is_empty() || f[1].is_empty() {
        return Err("empty id or short code".to_string());
    }
    Ok(Model {
        id: f[0].to_string(),
        short: f[1].to_string(),
        provider,
        context: int(4, "max_input")?,
        max_output: int(5, "max_output")?,
        input_price: num(6, "input_cost")?,
        output_price: num(7, "output_cost")?,
        min_temp: num(8, "min_temp")?,
        max_temp: num(9, "max_temp")?,
        completion_tokens: f.get(10).is_some_and(|v| v.eq_ignore_ascii_case("true")),
        embedding: f[2].ends_with("/embeddings"),
    })
}

/// The whitelist embedded in the binary, used when there is no `models.csv`.
pub const DEFAULT_WHITELIST: &str = "claude-h,gpt41,gemini-p,deepseek-r1,kimi,grok3m";

/// Parses a whitelist: short codes separated by commas and/or newlines; `#` starts a
/// comment that runs to the end of the line.
pub fn parse_whitelist(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or(""))
        .flat_map(|l| l.split(','))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_catalog_parses_whole() {
        let c = Catalog::parse(EMBEDDED).expect("embedded catalog parses");
        let lines = EMBEDDED
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
            .count();
        assert_eq!(c.all().len(), lines);
        assert!(c.all().len() >= 50);
        // Short codes are unique.
        let mut shorts: Vec<_> = c.all().iter().map(|m| m.short.to_lowercase()).collect();
        shorts.sort();
        shorts.dedup();
        assert_eq!(shorts.len(), c.all().len());
    }

    #[test]
    fn facts_of_known_models() {
        let c = Catalog::embedded();
        let m = c.get("gpt41").unwrap();
        assert_eq!(m.id, "gpt-4.1");
        assert_eq!(m.provider, Provider::Mammouth);
        assert_eq!((m.context, m.max_output), (128_000, 8192));
        assert_eq!((m.input_price, m.output_price), (2.0, 8.0));
        assert!(!m.completion_tokens);
        let g5 = c.get("gpt5m").unwrap();
        assert!(g5.completion_tokens);
        assert!(c.get("o3").unwrap().completion_tokens);
        let kimi = c.get("kimi").unwrap();
        assert_eq!(
            (kimi.provider, kimi.id.as_str()),
            (Provider::Moonshot, "kimi-k2.5")
        );
        let glm = c.get("zai-glm46").unwrap();
        assert_eq!(glm.provider, Provider::Zai);
        let claude = c.get("claude-h").unwrap();
        assert!(claude.is_claude());
        assert_eq!(claude.max_temp, 1.0);
        assert!(!c.get("gemini-p").unwrap().is_claude());
    }

    #[test]
    fn lookup_by_short_code_or_id_case_insensitive() {
        let c = Catalog::embedded();
        assert_eq!(c.get("GPT41").unwrap().short, "gpt41");
        assert_eq!(c.get("gpt-4.1").unwrap().short, "gpt41");
        assert_eq!(c.get("glm-4.6").unwrap().short, "zai-glm46");
        assert_eq!(c.get(" kimi ").unwrap().short, "kimi");
        assert!(c.get("gpt-99").is_none());
        assert!(c.get("").is_none());
    }

    #[test]
    fn whitelist_parsing() {
        let codes = parse_whitelist(
            "gpt41, claude-h\n# a comment, gemini-p\nkimi # trailing\n\n,,grok3m\r\n",
        );
        assert_eq!(codes, ["gpt41", "claude-h", "kimi", "grok3m"]);
        assert!(parse_whitelist("").is_empty());
        assert!(parse_whitelist("# only\n#comments").is_empty());
    }

    #[test]
    fn default_whitelist_is_all_known() {
        let (models, unknown) = Catalog::embedded().select(&parse_whitelist(DEFAULT_WHITELIST));
        assert!(unknown.is_empty(), "{unknown:?}");
        assert_eq!(models.len(), 6);
    }

    #[test]
    fn select_reports_unknown_and_skips_duplicates() {
        let codes = parse_whitelist("gpt41,nope,GPT41,gpt-4.1,kimi");
        let (models, unknown) = Catalog::embedded().select(&codes);
        let shorts: Vec<_> = models.iter().map(|m| m.short.as_str()).collect();
        assert_eq!(shorts, ["gpt41", "kimi"]);
        assert_eq!(unknown, ["nope"]);
    }

    #[test]
    fn bad_catalog_lines_are_refused() {
        assert!(
            Catalog::parse("a;b;url;MAMMOUTH_API_KEY;x;1;1;1;0;1;")
                .unwrap_err()
                .contains("line 1")
        );
        assert!(
            Catalog::parse("a;b;url;NOPE_KEY;1;1;1;1;0;1;")
                .unwrap_err()
                .contains("NOPE_KEY")
        );
        assert!(Catalog::parse("a;b;c").is_err());
    }

    #[test]
    fn urls_and_keys_from_the_environment() {
        let env = Env::from_pairs([
            ("MAMMOUTH_BASE_URL", "http://127.0.0.1:5000/v1/"),
            ("MOONSHOT_API_KEY", "sk-x"),
        ]);
        assert_eq!(
            Provider::Mammouth.chat_url(&env),
            "http://127.0.0.1:5000/v1/chat/completions"
        );
        assert_eq!(
            Provider::Zai.chat_url(&env),
            "https://api.z.ai/api/paas/v4/chat/completions"
        );
        assert_eq!(Provider::Moonshot.key(&env), Some("sk-x"));
        assert_eq!(Provider::Mammouth.key(&env), None);
        assert_eq!(Provider::Ollama.key(&env), None);
        assert_eq!(
            Provider::Ollama.chat_url(&Env::default()),
            "http://localhost:11434/v1/chat/completions"
        );
    }

    #[test]
    fn ollama_host_forms() {
        assert_eq!(ollama_base(None), "http://localhost:11434");
        assert_eq!(ollama_base(Some("")), "http://localhost:11434");
        assert_eq!(ollama_base(Some("box")), "http://box:11434");
        assert_eq!(ollama_base(Some("box:8080")), "http://box:8080");
        assert_eq!(ollama_base(Some("http://box:8080/")), "http://box:8080");
        assert_eq!(ollama_base(Some("http://box")), "http://box:11434");
        assert_eq!(ollama_base(Some("https://box")), "https://box:443");
        assert_eq!(ollama_base(Some("0.0.0.0:11434")), "http://0.0.0.0:11434");
        assert_eq!(ollama_base(Some("[::1]:11434")), "http://[::1]:11434");
        assert_eq!(ollama_base(Some("[::1]")), "http://[::1]:11434");
        assert_eq!(ollama_base(Some("::1")), "http://[::1]:11434");
        assert_eq!(
            ollama_base(Some("http://box:11434/ollama")),
            "http://box:11434/ollama"
        );
        // An empty host is this machine, an empty port the default one (as for Ollama).
        assert_eq!(ollama_base(Some(":11434")), "http://127.0.0.1:11434");
        assert_eq!(ollama_base(Some(" :8080 ")), "http://127.0.0.1:8080");
        assert_eq!(ollama_base(Some("http://:8080/")), "http://127.0.0.1:8080");
        assert_eq!(ollama_base(Some(":")), "http://127.0.0.1:11434");
        assert_eq!(ollama_base(Some("box:")), "http://box:11434");
        assert_eq!(ollama_base(Some("[::1]:")), "http://[::1]:11434");
    }

    #[test]
    fn a_key_is_used_without_blanks_around_it_and_never_with_a_control_character() {
        let env = |v: &str| Env::from_pairs([("MAMMOUTH_API_KEY", v)]);
        let m = Provider::Mammouth;
        assert_eq!(m.key(&env("sk-1")), Some("sk-1"));
        assert_eq!(m.key(&env(" sk-1\r\n")), Some("sk-1"));
        for bad in ["sk\r\nX-Injected: 1", "sk\u{7f}", "a\tb"] {
            assert_eq!(m.key(&env(bad)), None, "{bad:?}");
            assert_eq!(Provider::unusable_keys(&env(bad)), ["MAMMOUTH_API_KEY"]);
        }
        assert!(Provider::unusable_keys(&env("sk-1\n")).is_empty());
        assert!(Provider::unusable_keys(&Env::default()).is_empty());
    }
}
