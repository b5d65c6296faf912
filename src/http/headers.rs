//! A request's header lines, kept in one buffer: names in lower case, values as sent (lossy
//! UTF-8, trimmed), in order. Two allocations for any number of headers, where a pair of
//! `String`s each cost two per header on every request.

/// The header lines of a request.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers {
    text: String,
    /// Each line: where its name starts, where its value starts (its name's end), and
    /// where its value ends, in `text`.
    spans: Vec<[u32; 3]>,
}

impl Headers {
    pub fn new() -> Headers {
        Headers::default()
    }

    /// Room for `lines` lines of `bytes` bytes in all.
    pub fn with_capacity(lines: usize, bytes: usize) -> Headers {
        Headers {
            text: String::with_capacity(bytes),
            spans: Vec::with_capacity(lines),
        }
    }

    /// These pairs, in order (names are put in lower case).
    pub fn from_pairs<N: AsRef<str>, V: AsRef<str>>(
        pairs: impl IntoIterator<Item = (N, V)>,
    ) -> Headers {
        let mut h = Headers::new();
        for (n, v) in pairs {
            h.push(n.as_ref(), v.as_ref());
        }
        h
    }

    /// Adds a line; the name is put in lower case.
    pub fn push(&mut self, name: &str, value: &str) {
        let start = self.text.len();
        self.text.push_str(name);
        self.text[start..].make_ascii_lowercase();
        let middle = self.text.len();
        self.text.push_str(value);
        let end = self.text.len();
        // A head is at most a few hundred KiB: offsets fit in u32.
        self.spans.push([start as u32, middle as u32, end as u32]);
    }

    /// Adds a line as sent: its value read as UTF-8 (lossy) and trimmed.
    pub fn push_raw(&mut self, name: &str, value: &[u8]) {
        match std::str::from_utf8(value) {
            Ok(v) => self.push(name, v.trim()),
            Err(_) => self.push(name, String::from_utf8_lossy(value).trim()),
        }
    }

    /// The first value of `name` (in any case).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    /// Every line, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> + Clone + '_ {
        self.spans.iter().map(|&[s, m, e]| {
            (
                &self.text[s as usize..m as usize],
                &self.text[m as usize..e as usize],
            )
        })
    }

    pub fn len(&self) -> usize {
        self.spans.len()
    }

    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }
}

impl std::fmt::Debug for Headers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_keep_their_order_and_names_their_lower_case() {
        let mut h = Headers::with_capacity(2, 32);
        h.push("Content-Type", "application/json");
        h.push("X-Api-Key", "");
        h.push("content-type", "text/plain");
        assert_eq!(h.len(), 3);
        assert_eq!(h.get("CONTENT-TYPE"), Some("application/json"));
        assert_eq!(h.get("x-api-key"), Some(""));
        assert_eq!(h.get("missing"), None);
        let all: Vec<(&str, &str)> = h.iter().collect();
        assert_eq!(
            all,
            [
                ("content-type", "application/json"),
                ("x-api-key", ""),
                ("content-type", "text/plain")
            ]
        );
        assert_eq!(Headers::from_pairs(all.clone()), h);
        assert_eq!(format!("{h:?}").matches("content-type").count(), 2);
        assert!(Headers::new().is_empty());
    }

    #[test]
    fn raw_values_are_read_as_lossy_utf8_and_trimmed() {
        let mut h = Headers::new();
        h.push_raw("X-Bytes", b" caf\xc3\xa9 \xff ");
        h.push_raw("X-Ascii", b"\tplain ");
        assert_eq!(h.get("x-bytes"), Some("caf\u{e9} \u{fffd}"));
        assert_eq!(h.get("X-ASCII"), Some("plain"));
        assert_eq!(h.iter().next(), Some(("x-bytes", "caf\u{e9} \u{fffd}")));
    }
}
