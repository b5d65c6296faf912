//! Halves of UTF-16 surrogate pairs in stream deltas. JSON writes a character beyond the
//! BMP (an emoji) as two `\uXXXX` escapes, and a provider may cut its stream between them:
//! one delta's `content` ends with the high half, the next one's starts with the low half.
//! A Rust string holds neither half alone, so each becomes U+FFFD when its delta is read
//! ([`Text`], which remembers the halves at its two ends); [`Halves`] joins them again,
//! across deltas, where the text of a stream is put together (translations, session turn).

use std::borrow::Cow;

use serde::Deserialize;

const REPLACEMENT: char = '\u{fffd}';

/// The text of a delta's `content`: each lone surrogate in it is U+FFFD. The halves at its
/// very ends that may belong to a neighbour's are kept apart too: a high half at the end
/// (`high_at_end`) and a low half at the start (`low_at_start`), each also the U+FFFD there.
/// Reads as a `str`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Text {
    text: String,
    high_at_end: Option<u16>,
    low_at_start: Option<u16>,
}

impl std::ops::Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        &self.text
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Text {
        Text {
            text: s.to_string(),
            ..Text::default()
        }
    }
}

impl Text {
    /// From a JSON string's bytes as serde_json gives them for a byte buffer: UTF-8, with
    /// each lone surrogate escape in WTF-8 (three bytes `ED A0..BF 80..BF`).
    pub(super) fn from_wtf8(bytes: &[u8]) -> Text {
        if let Ok(s) = std::str::from_utf8(bytes) {
            return Text::from(s);
        }
        let mut t = Text {
            text: String::with_capacity(bytes.len()),
            ..Text::default()
        };
        let mut rest = bytes;
        while !rest.is_empty() {
            let e = match std::str::from_utf8(rest) {
                Ok(s) => {
                    t.text.push_str(s);
                    break;
                }
                Err(e) => e,
            };
            let (good, bad) = rest.split_at(e.valid_up_to());
            t.text.push_str(&String::from_utf8_lossy(good));
            let used = match bad {
                [0xED, b1 @ 0xA0..=0xBF, b2 @ 0x80..=0xBF, ..] => {
                    let unit = 0xD000 | (u16::from(b1 & 0x3F) << 6) | u16::from(b2 & 0x3F);
                    if t.text.is_empty() && is_low(unit) {
                        t.low_at_start = Some(unit);
                    }
                    if bad.len() == 3 && is_high(unit) {
                        t.high_at_end = Some(unit);
                    }
                    3
                }
                // Not from serde_json (its input is UTF-8): anything else invalid is one
                // U+FFFD, as `from_utf8_lossy` has it.
                _ => e.error_len().unwrap_or(bad.len()),
            };
            t.text.push(REPLACEMENT);
            rest = &bad[used.min(bad.len())..];
        }
        t
    }
}

fn is_high(unit: u16) -> bool {
    (0xD800..0xDC00).contains(&unit)
}

fn is_low(unit: u16) -> bool {
    (0xDC00..0xE000).contains(&unit)
}

/// The character of a high and a low half.
fn pair(high: u16, low: u16) -> char {
    let c = 0x10000 + ((u32::from(high) - 0xD800) << 10) + (u32::from(low) - 0xDC00);
    char::from_u32(c).unwrap_or(REPLACEMENT)
}

impl<'de> Deserialize<'de> for Text {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Text, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = Text;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }

            fn visit_str<E>(self, s: &str) -> Result<Text, E> {
                Ok(Text::from(s))
            }

            fn visit_bytes<E>(self, b: &[u8]) -> Result<Text, E> {
                Ok(Text::from_wtf8(b))
            }
        }
        // As bytes: serde_json gives a string with a lone surrogate escape as WTF-8 there,
        // where it refuses it as a `str`.
        d.deserialize_bytes(Visitor)
    }
}

/// Joins the halves of a surrogate pair split across two deltas of one stream: a delta's
/// high half at its end is held back until the next delta, whose low half at its start
/// makes one character with it; without one (or at the end of the stream) it is U+FFFD
/// after all. Costs nothing for a delta that does not end with a lone high half.
#[derive(Debug, Default)]
pub struct Halves {
    held: Option<u16>,
}

impl Halves {
    /// The text to pass on for a delta's `content` (`None`: the delta has none), in order:
    /// the half held from the delta before (joined or U+FFFD), then the content, without
    /// a high half at its end, which is held in turn.
    pub fn text<'a>(&mut self, content: Option<&'a Text>) -> Cow<'a, str> {
        let held = self.held.take();
        let (mut text, low, high) = match content {
            Some(t) => (t.text.as_str(), t.low_at_start, t.high_at_end),
            None => ("", None, None),
        };
        let first = held.map(|h| match low {
            Some(l) => {
                text = text.strip_prefix(REPLACEMENT).unwrap_or(text);
                pair(h, l)
            }
            None => REPLACEMENT,
        });
        if let Some(h) = high
            && let Some(before) = text.strip_suffix(REPLACEMENT)
        {
            text = before;
            self.held = Some(h);
        }
        match first {
            None => Cow::Borrowed(text),
            Some(c) => {
                let mut s = String::with_capacity(text.len() + 4);
                s.push(c);
                s.push_str(text);
                Cow::Owned(s)
            }
        }
    }

    /// Whether a high half is held.
    pub fn holding(&self) -> bool {
        self.held.is_some()
    }

    /// At the end of the stream: U+FFFD for a high half still held (no low half came).
    pub fn end(&mut self) -> Option<&'static str> {
        self.held.take().map(|_| "\u{fffd}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn text(json: &str) -> Text {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn lone_halves_are_replaced_and_those_at_the_ends_remembered() {
        assert_eq!(text(r#""plain é 😀""#), Text::from("plain é 😀"));
        assert_eq!(text(r#""\ud83d\ude00""#), Text::from("😀"));
        let t = text(r#""\ude00a\ud83db\ud83d""#);
        assert_eq!(&*t, "\u{fffd}a\u{fffd}b\u{fffd}");
        assert_eq!(
            (t.low_at_start, t.high_at_end),
            (Some(0xDE00), Some(0xD83D))
        );
        // A high half at the start or a low one at the end belongs to no neighbour.
        let t = text(r#""\ud83dx\ude00""#);
        assert_eq!(&*t, "\u{fffd}x\u{fffd}");
        assert_eq!((t.low_at_start, t.high_at_end), (None, None));
        let t = text(r#""\ud83d""#);
        assert_eq!((&*t, t.high_at_end), ("\u{fffd}", Some(0xD83D)));
        // Other bytes that are not UTF-8 (from no JSON string) are U+FFFD as well.
        for bytes in [&b"a\xffb\xed\xa0"[..], b"\xf0\x9f\x98", b"x\xc3"] {
            let t = Text::from_wtf8(bytes);
            assert_eq!(&*t, String::from_utf8_lossy(bytes), "{bytes:?}");
        }
        assert!(serde_json::from_str::<Text>("12").is_err());
    }

    #[test]
    fn halves_across_deltas_are_joined_and_lone_ones_stay_replaced() {
        let mut h = Halves::default();
        let (a, b) = (text(r#""A\ud83d""#), text(r#""\ude00B""#));
        assert_eq!(h.text(Some(&a)), "A");
        assert!(h.holding());
        assert_eq!(h.text(Some(&b)), "😀B");
        assert_eq!(h.end(), None);
        // Followed by something else: U+FFFD first.
        assert_eq!(h.text(Some(&a)), "A");
        assert_eq!(h.text(None), "\u{fffd}");
        assert_eq!(h.text(Some(&b)), "\u{fffd}B", "no high half before it");
        // A high half alone, twice, then the end.
        let lone = text(r#""\ud83d""#);
        assert_eq!(h.text(Some(&lone)), "");
        assert_eq!(h.text(Some(&lone)), "\u{fffd}");
        assert_eq!(h.end(), Some("\u{fffd}"));
        assert_eq!(h.end(), None);
        // Ordinary text is passed through as it is.
        let plain = Text::from("x");
        assert!(matches!(h.text(Some(&plain)), Cow::Borrowed("x")));
    }
}
