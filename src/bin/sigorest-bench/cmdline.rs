//! The other gateway's command line (`-compare-cmd`): split into words the way a POSIX
//! shell splits them (blanks, quotes, backslashes; no variables, globs, pipes or
//! redirections: the command runs without a shell, so that its process id is the
//! gateway's), leading `NAME=VALUE` words taken as environment as a shell does, and the
//! placeholders the bench fills (`{port}`, `{upstream}`...) replaced in every word.

/// What a placeholder stands for: `(name, value)`, the name without braces.
pub type Vars<'a> = [(&'a str, &'a str)];

/// The placeholders the bench fills, for messages.
pub const PLACEHOLDERS: &str = "{port}, {upstream}, {slow_upstream}, {fake}";

/// Characters a shell would treat specially when unquoted; refused here rather than passed
/// on as a literal the user did not mean.
const SHELL_ONLY: &str = "|&;<>()$`*?";

/// Splits `line` into words. Blanks separate words; `'...'` keeps everything literally;
/// `"..."` keeps everything but a backslash before `"`, `\`, `$` or `` ` `` (and refuses
/// an unescaped `$` or `` ` ``, which a shell would expand); a backslash outside quotes
/// keeps the next character.
pub fn split(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word: Option<String> = None;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            c if c.is_whitespace() => words.extend(word.take()),
            '\'' => {
                let w = word.get_or_insert_with(String::new);
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(c) => w.push(c),
                        None => return Err("a ' quote is not closed".into()),
                    }
                }
            }
            '"' => double_quoted(&mut chars, word.get_or_insert_with(String::new))?,
            '\\' => match chars.next() {
                // A backslash before a line end joins the lines.
                Some('\n') => {}
                Some(c) => word.get_or_insert_with(String::new).push(c),
                None => return Err("the command ends with a backslash".into()),
            },
            c if SHELL_ONLY.contains(c) => {
                return Err(format!(
                    "{c:?} is for a shell, and the command runs without one: quote it, or run sh -c '...' (then the measured process is the shell unless it execs the gateway)"
                ));
            }
            c => word.get_or_insert_with(String::new).push(c),
        }
    }
    words.extend(word);
    Ok(words)
}

/// The rest of a `"..."` word, after its opening quote.
fn double_quoted(chars: &mut std::str::Chars, w: &mut String) -> Result<(), String> {
    loop {
        match chars.next() {
            Some('"') => return Ok(()),
            Some('\\') => match chars.next() {
                Some(c @ ('"' | '\\' | '$' | '`')) => w.push(c),
                Some('\n') => {}
                Some(c) => {
                    w.push('\\');
                    w.push(c);
                }
                None => return Err("a \" quote is not closed".into()),
            },
            Some(c @ ('$' | '`')) => {
                return Err(format!(
                    "{c:?} inside \"...\" would be expanded by a shell, and the command runs without one: write \\{c} or use '...'"
                ));
            }
            Some(c) => w.push(c),
            None => return Err("a \" quote is not closed".into()),
        }
    }
}

/// Whether `word` is a shell assignment (`NAME=VALUE`, NAME of letters, digits and `_`,
/// not starting with a digit): the environment variable and its value.
pub fn assignment(word: &str) -> Option<(&str, &str)> {
    let (name, value) = word.split_once('=')?;
    let mut c = name.chars();
    let first = c.next()?;
    ((first.is_ascii_alphabetic() || first == '_')
        && c.all(|c| c.is_ascii_alphanumeric() || c == '_'))
    .then_some((name, value))
}

/// A command split into its environment (leading assignments) and its program and
/// arguments.
pub fn env_and_words(words: Vec<String>) -> (Vec<(String, String)>, Vec<String>) {
    let at = words
        .iter()
        .position(|w| assignment(w).is_none())
        .unwrap_or(words.len());
    let mut words = words;
    let rest = words.split_off(at);
    let env = words
        .iter()
        .filter_map(|w| assignment(w))
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    (env, rest)
}

/// `word` with every `{name}` replaced by its value from `vars`; `{{` and `}}` stand for
/// a literal brace. An unknown name or an unclosed `{` is an error naming it.
pub fn substitute(word: &str, vars: &Vars) -> Result<String, String> {
    let mut out = String::with_capacity(word.len());
    let mut rest = word;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(after) = tail.strip_prefix("{{").or_else(|| tail.strip_prefix("}}")) {
            out.push_str(&tail[..1]);
            rest = after;
        } else if let Some(after) = tail.strip_prefix('}') {
            out.push('}');
            rest = after;
        } else {
            let end = tail
                .find('}')
                .ok_or_else(|| format!("{word:?} opens a {{ it does not close"))?;
            let name = &tail[1..end];
            let value = vars
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| {
                    format!("unknown placeholder {{{name}}} (the bench fills {PLACEHOLDERS})")
                })?;
            out.push_str(value);
            rest = &tail[end + 1..];
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// Whether `word` uses the placeholder `name` (one of [`PLACEHOLDERS`]; `{{` escapes
/// taken into account).
pub fn uses(word: &str, name: &str) -> bool {
    let marker = "\u{0}";
    let vars: Vec<(&str, &str)> = placeholder_names()
        .into_iter()
        .map(|n| (n, if n == name { marker } else { "" }))
        .collect();
    substitute(word, &vars).is_ok_and(|s| s.contains(marker))
}

/// The names in [`PLACEHOLDERS`].
pub fn placeholder_names() -> Vec<&'static str> {
    PLACEHOLDERS
        .split(", ")
        .map(|p| p.trim_matches(['{', '}']))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(line: &str) -> Vec<String> {
        split(line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    }

    #[test]
    fn commands_split_like_a_shell() {
        assert_eq!(
            words("  target/release/sigorest -http-port {port}\t-q  "),
            ["target/release/sigorest", "-http-port", "{port}", "-q"]
        );
        assert_eq!(
            words(r#"gw --name 'two words' --x "a \"b\" \$c \d" back\ slash ''"#),
            [
                "gw",
                "--name",
                "two words",
                "--x",
                r#"a "b" $c \d"#,
                "back slash",
                ""
            ]
        );
        assert_eq!(words("a'b'\"c\"d"), ["abcd"]);
        assert_eq!(words("one \\\ntwo"), ["one", "two"]);
        assert_eq!(words("'|' \"a;b\" \\&"), ["|", "a;b", "&"]);
        assert!(words("").is_empty() && words("   ").is_empty());
        assert_eq!(words("'$HOME'"), ["$HOME"]);
        for bad in [
            "gw \"$HOME\"",
            "gw 'open",
            "gw \"open",
            "gw \\",
            "gw | tee",
            "gw > log",
            "gw $HOME",
            "a;b",
        ] {
            assert!(split(bad).is_err(), "{bad:?} should be refused");
        }
    }

    #[test]
    fn leading_assignments_are_environment() {
        let (env, rest) = env_and_words(words("A=1 _B={upstream} gw C=3 -x"));
        assert_eq!(
            env,
            [
                ("A".to_string(), "1".to_string()),
                ("_B".to_string(), "{upstream}".to_string())
            ]
        );
        assert_eq!(rest, ["gw", "C=3", "-x"]);
        assert_eq!(assignment("K="), Some(("K", "")));
        for not in ["=x", "1A=x", "a-b=x", "./gw", "gw"] {
            assert_eq!(assignment(not), None, "{not}");
        }
        let (env, rest) = env_and_words(words("A=1"));
        assert_eq!((env.len(), rest.len()), (1, 0));
    }

    #[test]
    fn placeholders_are_filled() {
        let vars = [
            ("port", "4242"),
            ("upstream", "http://127.0.0.1:9/v1"),
            ("fake", "127.0.0.1:9"),
        ];
        let s = |w| substitute(w, &vars);
        assert_eq!(s("{port}").as_deref(), Ok("4242"));
        assert_eq!(
            s("--upstream={upstream}/x").as_deref(),
            Ok("--upstream=http://127.0.0.1:9/v1/x")
        );
        assert_eq!(s("{fake}{port}").as_deref(), Ok("127.0.0.1:94242"));
        assert_eq!(s("no braces").as_deref(), Ok("no braces"));
        assert_eq!(s(r#"{{"a":{port}}}"#).as_deref(), Ok(r#"{"a":4242}"#));
        assert_eq!(s("a}b").as_deref(), Ok("a}b"));
        let unknown = s("{prot}").unwrap_err();
        assert!(
            unknown.contains("{prot}") && unknown.contains("{port}"),
            "{unknown}"
        );
        assert!(s("{port").is_err());
        // A value is not scanned again.
        assert_eq!(
            substitute("{a}", &[("a", "{b}"), ("b", "x")]).as_deref(),
            Ok("{b}")
        );
        assert!(uses("-p={port}", "port") && uses("{upstream}:{port}", "port"));
        assert!(!uses("{{port}}", "port") && !uses("-p 80", "port"));
        assert_eq!(
            placeholder_names(),
            ["port", "upstream", "slow_upstream", "fake"]
        );
    }
}
