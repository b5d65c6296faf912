//! The environment variables sigorest reads, captured once.
//!
//! Code reads an [`Env`] instead of `std::env`, so tests give each in-process server its own
//! keys and base URLs without touching the process environment.

use std::collections::HashMap;

/// A snapshot of environment variables.
///
/// Its `Debug` shows the names only: the values include provider keys.
#[derive(Clone, Default)]
pub struct Env {
    vars: HashMap<String, String>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut names: Vec<&str> = self.vars.keys().map(String::as_str).collect();
        names.sort_unstable();
        f.debug_struct("Env").field("names", &names).finish()
    }
}

impl Env {
    /// The process environment (only valid UTF-8 variables).
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars_os()
                .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
                .collect(),
        }
    }

    /// An environment made of these pairs, for tests.
    pub fn from_pairs<K: Into<String>, V: Into<String>>(
        pairs: impl IntoIterator<Item = (K, V)>,
    ) -> Env {
        Env {
            vars: pairs
                .into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        }
    }

    /// A variable's value; an empty value counts as unset.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.trim().is_empty())
    }
}

/// A key as it goes into an `Authorization` header: without the blanks around it (a key
/// read from a file with `$(cat key)` may keep a CRLF file's `\r`); `None` when a control
/// character is inside, which would end the header line early (or add a line of its own).
pub fn header_key(raw: &str) -> Option<&str> {
    let key = raw.trim();
    (!key.chars().any(char::is_control)).then_some(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_header_key_is_trimmed_and_never_holds_a_control_character() {
        assert_eq!(header_key(" sk-1\r\n"), Some("sk-1"));
        assert_eq!(header_key("  "), Some(""));
        assert_eq!(header_key("sk\r\nX-Injected: 1"), None);
        assert_eq!(header_key("a\tb"), None);
    }

    #[test]
    fn empty_values_count_as_unset() {
        let env = Env::from_pairs([("A", "1"), ("B", ""), ("C", "  ")]);
        assert_eq!(env.get("A"), Some("1"));
        assert_eq!(env.get("B"), None);
        assert_eq!(env.get("C"), None);
        assert_eq!(env.get("D"), None);
    }

    #[test]
    fn debug_shows_names_not_values() {
        let env = Env::from_pairs([("MAMMOUTH_API_KEY", "sk-secret-value")]);
        let shown = format!("{env:?}");
        assert!(shown.contains("MAMMOUTH_API_KEY"), "{shown}");
        assert!(!shown.contains("sk-secret"), "{shown}");
    }
}
