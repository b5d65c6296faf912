//! `sigoe -l` and `-i`: the model table and one model's details, as text. Pure: the models
//! come from the embedded catalog or from a gateway's `GET /api/models`.

use serde_json::Value;

use crate::state::catalog::{Model, Provider};

/// Whether a model's provider key is set where the call is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyState {
    Set,
    Missing,
    /// Ollama needs none.
    NotNeeded,
}

impl KeyState {
    fn word(self) -> &'static str {
        match self {
            KeyState::Set => "set",
            KeyState::Missing => "missing",
            KeyState::NotNeeded => "-",
        }
    }
}

/// A price in $ per million tokens: two decimals, more when the price has them
/// (`2.00`, `0.025`).
pub fn price(p: f64) -> String {
    let two = format!("{p:.2}");
    let exact = format!("{p:.4}");
    let exact = exact.trim_end_matches('0');
    if exact.len() > two.len() {
        exact.to_string()
    } else {
        two
    }
}

/// A token count, or `-` when unknown (0).
fn tokens(n: u64) -> String {
    if n == 0 {
        "-".to_string()
    } else {
        n.to_string()
    }
}

/// The aligned table of `sigoe -l`: a header line, then one line per model. Text columns are
/// left-aligned, numbers right-aligned, two spaces apart; no trailing spaces.
pub fn table(models: &[(Model, KeyState)]) -> String {
    const HEADER: [&str; 8] = [
        "MODEL", "ID", "PROVIDER", "CONTEXT", "OUTPUT", "$IN/M", "$OUT/M", "KEY",
    ];
    const RIGHT: [bool; 8] = [false, false, false, true, true, true, true, false];
    let mut rows: Vec<[String; 8]> = vec![HEADER.map(str::to_string)];
    rows.extend(models.iter().map(|(m, key)| {
        [
            m.short.clone(),
            m.id.clone(),
            m.provider.name().to_string(),
            tokens(m.context),
            tokens(m.max_output),
            price(m.input_price),
            price(m.output_price),
            key.word().to_string(),
        ]
    }));
    aligned(&rows, RIGHT)
}

/// Rows as an aligned table: columns two spaces apart, text left-aligned, the columns marked
/// in `right` right-aligned; no trailing spaces.
pub(super) fn aligned<const N: usize>(rows: &[[String; N]], right: [bool; N]) -> String {
    let mut widths = [0usize; N];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            let pad = widths[i] - cell.chars().count();
            if right[i] {
                line.extend(std::iter::repeat_n(' ', pad));
                line.push_str(cell);
            } else {
                line.push_str(cell);
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The details of `sigoe -i MODEL`, one `name  value` line each.
pub fn detail(m: &Model, key: KeyState, endpoint: &str) -> String {
    let key_line = match (m.provider.key_env(), key) {
        (None, _) | (_, KeyState::NotNeeded) => "none needed".to_string(),
        (Some(var), KeyState::Set) => format!("{var} (set)"),
        (Some(var), KeyState::Missing) => format!("{var} (missing)"),
    };
    let field = if m.completion_tokens {
        "max_completion_tokens"
    } else {
        "max_tokens"
    };
    let temperature = if m.max_temp > 0.0 {
        format!("{} to {} (clamped)", m.min_temp, m.max_temp)
    } else {
        "not known (passed as given)".to_string()
    };
    let lines = [
        ("model", m.short.clone()),
        ("id", m.id.clone()),
        ("provider", m.provider.name().to_string()),
        ("endpoint", endpoint.to_string()),
        ("key", key_line),
        ("context", format!("{} tokens", tokens(m.context))),
        (
            "max output",
            format!("{} tokens, sent as {field}", tokens(m.max_output)),
        ),
        (
            "price",
            format!(
                "${} in, ${} out per million tokens",
                price(m.input_price),
                price(m.output_price)
            ),
        ),
        ("temperature", temperature),
    ];
    lines
        .iter()
        .map(|(name, value)| format!("{name:<12} {value}\n"))
        .collect()
}

/// Reads a gateway's `GET /api/models` answer: `{"data": [{"short", "id", "provider",
/// "context_tokens", "max_output_tokens", "input_price_per_million",
/// "output_price_per_million", "temperature": {"min", "max"},
/// "uses_max_completion_tokens", "key_set"}, ...]}`. Entries of an unknown provider are
/// skipped; a missing number counts as unknown (0).
pub fn from_gateway(body: &[u8]) -> Result<Vec<(Model, KeyState)>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("not JSON: {e}"))?;
    let data = v["data"]
        .as_array()
        .ok_or_else(|| "no 'data' array".to_string())?;
    let mut out = Vec::new();
    for item in data {
        let text = |k: &str| item[k].as_str().map(str::to_string);
        let (Some(short), Some(id)) = (text("short"), text("id")) else {
            continue;
        };
        let provider = match item["provider"].as_str() {
            Some("mammouth") => Provider::Mammouth,
            Some("moonshot") => Provider::Moonshot,
            Some("zai") => Provider::Zai,
            Some("ollama") => Provider::Ollama,
            Some("llama.cpp") => Provider::Llama,
            _ => continue,
        };
        let int = |k: &str| item[k].as_u64().unwrap_or(0);
        let num = |v: &Value| v.as_f64().unwrap_or(0.0);
        let model = Model {
            short,
            id,
            provider,
            context: int("context_tokens"),
            max_output: int("max_output_tokens"),
            input_price: num(&item["input_price_per_million"]),
            output_price: num(&item["output_price_per_million"]),
            min_temp: num(&item["temperature"]["min"]),
            max_temp: num(&item["temperature"]["max"]),
            completion_tokens: item["uses_max_completion_tokens"].as_bool() == Some(true),
            embedding: item["embedding"].as_bool() == Some(true),
        };
        let key = match (provider, item["key_set"].as_bool()) {
            (Provider::Ollama | Provider::Llama, _) => KeyState::NotNeeded,
            (_, Some(true)) => KeyState::Set,
            _ => KeyState::Missing,
        };
        out.push((model, key));
    }
    Ok(out)
}
