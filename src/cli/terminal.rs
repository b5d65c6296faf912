//! What sigoe prints on a terminal. A model's answer may hold escape sequences — put there
//! by a prompt injection in a web page or a diff under review — that a terminal obeys: a
//! window title (OSC 0), a clipboard write (OSC 52), colours, cursor moves that hide text,
//! a bell. On a terminal they are shown instead, in the caret notation of `cat -v`: ESC is
//! `^[`, BEL `^G`, DEL `^?`, the C1 control U+009B `M-^[`. Line breaks and tabs stay; a
//! carriage return stays only before a line feed (`\r\n`), since alone it lets later text
//! cover earlier text. JSON (`-j`) keeps its meaning: raw controls in it become `\u` escapes.
//! To a pipe or a file the answer goes byte for byte: scripts rely on it.

use std::borrow::Cow;

/// Shows the pieces of one answer for stdout, a terminal or not. Keep one per answer: a
/// carriage return at the end of a streamed piece waits for the next one to see whether a
/// line feed follows.
#[derive(Debug)]
pub struct Shown {
    terminal: bool,
    /// A `\r` that ended the last piece, not printed yet.
    held_cr: bool,
}

impl Shown {
    /// `terminal`: whether stdout is a terminal (`std::io::IsTerminal`).
    pub fn new(terminal: bool) -> Shown {
        Shown {
            terminal,
            held_cr: false,
        }
    }

    /// The text to print for the next piece of the answer.
    pub fn piece<'a>(&mut self, text: &'a str) -> Cow<'a, str> {
        if !self.terminal || text.is_empty() || (!self.held_cr && !text.chars().any(needs_showing))
        {
            return Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len() + 8);
        let mut chars = text.chars().peekable();
        if std::mem::take(&mut self.held_cr) {
            out.push_str(if chars.peek() == Some(&'\n') {
                "\r"
            } else {
                "^M"
            });
        }
        while let Some(c) = chars.next() {
            match c {
                '\r' => match chars.peek() {
                    Some('\n') => out.push('\r'),
                    Some(_) => out.push_str("^M"),
                    None => self.held_cr = true,
                },
                c if needs_showing(c) => push_caret(&mut out, c),
                c => out.push(c),
            }
        }
        Cow::Owned(out)
    }

    /// What is still to print when the answer ends: a carriage return held back, shown.
    pub fn end(&mut self) -> &'static str {
        if std::mem::take(&mut self.held_cr) {
            "^M"
        } else {
            ""
        }
    }
}

/// JSON for a terminal. Its strings hold C0 controls only as escapes (`\u001b`), but may
/// hold DEL and C1 controls (U+0080–U+009F) raw: those are written as escapes too, which
/// mean the same characters, so the JSON is unchanged for any reader. A carriage return,
/// which valid JSON has only as white space between tokens, is left alone.
pub fn json_escaped(json: &str) -> Cow<'_, str> {
    let escape = |c: char| c != '\r' && needs_showing(c);
    if !json.chars().any(escape) {
        return Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        if escape(c) {
            out.push_str(&format!("\\u{:04x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// Whether a terminal would take this character as a command: C0 controls but the line feed
/// and the tab (the carriage return is judged with what follows it), DEL and C1 controls.
fn needs_showing(c: char) -> bool {
    matches!(c, '\0'..='\u{1f}' | '\u{7f}'..='\u{9f}') && c != '\n' && c != '\t'
}

/// `cat -v`'s notation: `^@`…`^_`, `^?`, and `M-` before the C0 form of a C1 control.
fn push_caret(out: &mut String, c: char) {
    let code = u32::from(c);
    let (meta, low) = if code >= 0x80 {
        ("M-", code - 0x80)
    } else {
        ("", code)
    };
    out.push_str(meta);
    out.push('^');
    out.push(if low == 0x7f {
        '?'
    } else {
        char::from_u32(low + 0x40).unwrap_or('?')
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shown(terminal: bool, pieces: &[&str]) -> String {
        let mut s = Shown::new(terminal);
        let mut out: String = pieces.iter().map(|p| s.piece(p).into_owned()).collect();
        out.push_str(s.end());
        out
    }

    #[test]
    fn a_terminal_sees_control_characters_not_their_effect() {
        let cases = [
            (
                "plain text, é 😀\n\tindented",
                "plain text, é 😀\n\tindented",
            ),
            ("\x1b]0;pwned\x07", "^[]0;pwned^G"),
            ("\x1b]52;c;cm0gLXJm\x07", "^[]52;c;cm0gLXJm^G"),
            ("\x1b[31mred\x1b[0m", "^[[31mred^[[0m"),
            ("\0\x08\x0b\x0c\x1f\x7f", "^@^H^K^L^_^?"),
            (
                "\u{9b}31m \u{9d}0;t\u{9c} \u{80}\u{9f}",
                "M-^[31m M-^]0;tM-^\\ M-^@M-^_",
            ),
            ("a\r\nb", "a\r\nb"),
            ("rm -rf ~\rls      ", "rm -rf ~^Mls      "),
            ("end\r", "end^M"),
            ("\u{a0}\u{200b}", "\u{a0}\u{200b}"),
        ];
        for (answer, want) in cases {
            assert_eq!(shown(true, &[answer]), want, "{answer:?}");
        }
    }

    #[test]
    fn a_carriage_return_at_the_end_of_a_piece_waits_for_the_next() {
        assert_eq!(shown(true, &["a\r", "\nb"]), "a\r\nb");
        assert_eq!(shown(true, &["a\r", "b"]), "a^Mb");
        assert_eq!(shown(true, &["a\r", "", "\n"]), "a\r\n");
        assert_eq!(shown(true, &["\x1b", "[2J"]), "^[[2J");
    }

    #[test]
    fn json_for_a_terminal_means_the_same() {
        let json = "{\"a\":\"\\u001b]0;t\\u0007 \u{9d}0;t\u{9c} \u{7f}\"}\r\n";
        let shown = json_escaped(json);
        assert_eq!(
            shown,
            "{\"a\":\"\\u001b]0;t\\u0007 \\u009d0;t\\u009c \\u007f\"}\r\n"
        );
        let (a, b): (serde_json::Value, serde_json::Value) = (
            serde_json::from_str(json).unwrap(),
            serde_json::from_str(&shown).unwrap(),
        );
        assert_eq!(a, b);
        assert!(matches!(json_escaped("{\"a\":\"é\"}"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_pipe_or_a_file_gets_every_byte_as_it_came() {
        for answer in ["\x1b]0;pwned\x07", "a\rb\r", "\u{9b}\0\x7f", "plain\n"] {
            assert_eq!(shown(false, &[answer]), answer);
            assert!(matches!(Shown::new(false).piece(answer), Cow::Borrowed(_)));
        }
        assert_eq!(shown(false, &["a\r", "b"]), "a\rb");
    }
}
