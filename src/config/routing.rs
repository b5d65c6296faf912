//! The routing flags: `-fallback` (which models stand in for which) and `-auto` (the models
//! the name `auto` chooses from). Names are checked against the models on offer when the
//! gateway starts (an unknown one is a WARN, as in `models.csv`), not here.

use crate::error::Error;

use super::bad;

/// How requests move between models.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Routing {
    /// Per model (as written), the models to try next, in order (`-fallback`).
    pub fallbacks: Vec<(String, Vec<String>)>,
    /// The models `auto` chooses from (`-auto`); empty: `auto` is not offered.
    pub auto: Vec<String>,
}

impl Routing {
    /// The server's fallbacks for a model name (any case).
    pub fn fallbacks_of(&self, model: &str) -> &[String] {
        self.fallbacks
            .iter()
            .find(|(m, _)| m.eq_ignore_ascii_case(model))
            .map_or(&[], |(_, list)| list.as_slice())
    }
}

/// `-fallback 'gpt41=kimi|zai-glm46,claude-h=claude-s45'`.
pub fn parse_fallbacks(v: &str) -> Result<Vec<(String, Vec<String>)>, Error> {
    let mut out: Vec<(String, Vec<String>)> = Vec::new();
    for rule in v.split(',').map(str::trim).filter(|r| !r.is_empty()) {
        let Some((model, next)) = rule.split_once('=') else {
            return Err(bad(format!(
                "-fallback: '{rule}' is not MODEL=FALLBACK|FALLBACK (e.g. gpt41=kimi|zai-glm46)"
            )));
        };
        let model = name(model, rule)?;
        let next = next
            .split('|')
            .map(|n| name(n, rule))
            .collect::<Result<Vec<_>, _>>()?;
        if out.iter().any(|(m, _)| m.eq_ignore_ascii_case(&model)) {
            return Err(bad(format!("-fallback: {model} is given twice")));
        }
        out.push((model, next));
    }
    Ok(out)
}

/// `-auto 'claude-h,gpt41,kimi'`.
pub fn parse_auto(v: &str) -> Result<Vec<String>, Error> {
    v.split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(|n| name(n, v))
        .collect()
}

fn name(n: &str, rule: &str) -> Result<String, Error> {
    let n = n.trim();
    if n.is_empty() || n.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(format!("-fallback/-auto: bad model name in '{rule}'")));
    }
    Ok(n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallback_rules() {
        let f = parse_fallbacks("gpt41=kimi|zai-glm46, claude-h = claude-s45").unwrap();
        assert_eq!(
            f,
            vec![
                (
                    "gpt41".to_string(),
                    vec!["kimi".to_string(), "zai-glm46".to_string()]
                ),
                ("claude-h".to_string(), vec!["claude-s45".to_string()]),
            ]
        );
        let r = Routing {
            fallbacks: f,
            auto: Vec::new(),
        };
        assert_eq!(r.fallbacks_of("GPT41"), ["kimi", "zai-glm46"]);
        assert!(r.fallbacks_of("kimi").is_empty());
        for bad in [
            "gpt41",
            "gpt41=",
            "=kimi",
            "gpt41=kimi||x",
            "a=b,A=c",
            "a b=c",
        ] {
            assert!(parse_fallbacks(bad).is_err(), "{bad}");
        }
        assert!(parse_fallbacks("").unwrap().is_empty());
    }

    #[test]
    fn auto_lists() {
        assert_eq!(
            parse_auto("claude-h, gpt41,,kimi").unwrap(),
            ["claude-h", "gpt41", "kimi"]
        );
        assert!(parse_auto("a\u{7}b").is_err());
    }
}
