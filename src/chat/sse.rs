//! Server-Sent Events as providers send them, and as the gateway relays them.
//!
//! The parser takes what providers really send: `\n`, `\r\n` or `\r` line ends (all three
//! are SSE), `:` comment lines
//! (keep-alives), `event:`, `id:` and `retry:` lines (ignored), several `data:` lines in one
//! event (joined with `\n`), events split across reads, and a last event without the blank
//! line that should end it. Lines are capped, so a provider cannot make the gateway buffer
//! without bound. It does no I/O: bytes are fed to it as they come, and whoever reads them
//! decides how long to wait for the next event (comments do not extend that wait).

use std::io;

/// Longest line the parser accepts (a chunk carrying a big tool-call argument or an image).
pub const MAX_LINE: usize = 8 * 1024 * 1024;

/// One event's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `data: <payload>` (lines joined).
    Data(String),
    /// `data: [DONE]`: the end of an OpenAI stream.
    Done,
}

/// Turns bytes, fed as they come, into events.
#[derive(Debug)]
pub struct EventParser {
    buf: Vec<u8>,
    /// Where the unread bytes of `buf` start.
    pos: usize,
    /// The event being gathered (its `data:` lines so far).
    data: Option<String>,
    max_line: usize,
    /// The last line ended with a `\r` that was the last byte read: a `\n` that comes
    /// next belongs to that line end.
    after_cr: bool,
}

impl Default for EventParser {
    fn default() -> Self {
        EventParser::new()
    }
}

fn invalid(message: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message.to_string())
}

impl EventParser {
    pub fn new() -> EventParser {
        EventParser::with_max_line(MAX_LINE)
    }

    /// With a smaller line cap (tests).
    pub fn with_max_line(max_line: usize) -> EventParser {
        EventParser {
            buf: Vec::new(),
            pos: 0,
            data: None,
            max_line,
            after_cr: false,
        }
    }

    /// Takes more bytes of the stream.
    pub fn feed(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete event; `Ok(None)` when more bytes are needed. An error for a line
    /// or event over the cap; bytes that are not UTF-8 are read as U+FFFD.
    pub fn next_event(&mut self) -> io::Result<Option<Event>> {
        loop {
            if self.after_cr && self.pos < self.buf.len() {
                self.after_cr = false;
                if self.buf[self.pos] == b'\n' {
                    self.pos += 1;
                }
            }
            let rest = &self.buf[self.pos..];
            let Some(i) = rest.iter().position(|&b| b == b'\n' || b == b'\r') else {
                if rest.len() > self.max_line {
                    return Err(invalid("event stream line too long"));
                }
                // Keep only the unfinished line.
                self.buf.drain(..self.pos);
                self.pos = 0;
                return Ok(None);
            };
            let start = self.pos;
            let mut end = self.pos + i + 1;
            if rest[i] == b'\r' {
                match rest.get(i + 1) {
                    Some(b'\n') => end += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            self.pos = end;
            let line = &self.buf[start..self.pos];
            if let Some(event) = take_line(&mut self.data, self.max_line, line)? {
                return Ok(Some(event));
            }
        }
    }

    /// At the end of the stream: the last event, when it was cut off without its blank line.
    pub fn finish(&mut self) -> io::Result<Option<Event>> {
        let rest = &self.buf[self.pos..];
        let last = if rest.is_empty() {
            None
        } else {
            take_line(&mut self.data, self.max_line, rest)?
        };
        self.buf.clear();
        self.pos = 0;
        self.after_cr = false;
        match last {
            Some(event) => Ok(Some(event)),
            None => Ok(self.data.take().map(to_event)),
        }
    }
}

/// One line (its end included or not) into the event being gathered (`data`): the event
/// when it is the blank line ending one.
fn take_line(data: &mut Option<String>, max_line: usize, raw: &[u8]) -> io::Result<Option<Event>> {
    let line = trim_eol(raw);
    if line.len() > max_line {
        return Err(invalid("event stream line too long"));
    }
    if line.is_empty() {
        return Ok(data.take().map(to_event));
    }
    // Bytes that are not UTF-8 (a local server cutting a character between two tokens)
    // are read as U+FFFD: the rest of a billed answer is not lost to them. No byte of a
    // multi-byte character is a line end, so cutting lines splits none.
    let text = String::from_utf8_lossy(line);
    if let Some(value) = field(&text, "data") {
        match data {
            // Many `data:` lines make one event: it is capped as a line is.
            Some(d) if d.len() + 1 + value.len() > max_line => {
                return Err(invalid("event stream event too long"));
            }
            Some(d) => {
                d.push('\n');
                d.push_str(value);
            }
            None => *data = Some(value.to_string()),
        }
    }
    // Comments (":...") and other fields (event, id, retry) carry nothing we relay.
    Ok(None)
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// The value of `name: value` (one optional space after the colon), if the line is that field.
fn field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    let rest = line.strip_prefix(name)?;
    let value = rest.strip_prefix(':')?;
    Some(value.strip_prefix(' ').unwrap_or(value))
}

fn to_event(data: String) -> Event {
    if data.trim() == "[DONE]" {
        Event::Done
    } else {
        Event::Data(data)
    }
}

/// One event as the gateway writes it: `data: <payload>\n\n`. A payload with line breaks
/// becomes several `data:` lines, as the format requires.
pub fn frame(payload: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 8);
    for line in payload.split('\n') {
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(line.strip_suffix('\r').unwrap_or(line).as_bytes());
        out.push(b'\n');
    }
    out.push(b'\n');
    out
}

/// Appends one named event, `event: <name>\ndata: <json>\n\n`, as the Anthropic and
/// Responses streams frame theirs (JSON text holds no line break, so one `data:` line).
pub fn named(out: &mut Vec<u8>, name: &str, data: &serde_json::Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    // Writing a `Value` into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, data);
    out.extend_from_slice(b"\n\n");
}

/// The end of an OpenAI stream.
pub const DONE: &[u8] = b"data: [DONE]\n\n";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every event of `input`, fed in pieces of `step` bytes, then the end.
    fn events_in(input: &[u8], step: usize) -> io::Result<Vec<Event>> {
        let mut p = EventParser::new();
        let mut out = Vec::new();
        for piece in input.chunks(step.max(1)) {
            p.feed(piece);
            while let Some(e) = p.next_event()? {
                out.push(e);
            }
        }
        if let Some(e) = p.finish()? {
            out.push(e);
        }
        Ok(out)
    }

    fn events(input: &[u8]) -> Vec<Event> {
        events_in(input, 4096).unwrap()
    }

    fn data(s: &str) -> Event {
        Event::Data(s.to_string())
    }

    #[test]
    fn plain_openai_stream() {
        let input = b"data: {\"a\":1}\n\ndata: {\"b\":2}\n\ndata: [DONE]\n\n";
        assert_eq!(
            events(input),
            [data("{\"a\":1}"), data("{\"b\":2}"), Event::Done]
        );
    }

    #[test]
    fn quirks_providers_send() {
        let input = b": keep-alive\r\n\r\nevent: message\r\nid: 7\r\ndata: {\"x\":1}\r\n\r\nretry: 100\n\n\n\ndata:{\"nospace\":1}\n\ndata: [DONE]";
        assert_eq!(
            events(input),
            [data("{\"x\":1}"), data("{\"nospace\":1}"), Event::Done]
        );
    }

    #[test]
    fn multi_line_data_and_last_event_without_blank_line() {
        assert_eq!(
            events(b"data: a\ndata: b\n\ndata: tail"),
            [data("a\nb"), data("tail")]
        );
        assert_eq!(events(b""), Vec::<Event>::new());
        assert_eq!(events(b"\n\n: only comments\n"), Vec::<Event>::new());
    }

    #[test]
    fn events_split_anywhere() {
        let input = b"data: {\"long\":\"value\"}\r\n\r\ndata: [DONE]\r\n\r\n";
        for step in 1..input.len() {
            assert_eq!(
                events_in(input, step).unwrap(),
                [data("{\"long\":\"value\"}"), Event::Done],
                "step {step}"
            );
        }
    }

    #[test]
    fn cr_alone_ends_lines_too() {
        let input = b": hi\rdata: a\rdata: b\r\rdata: {\"c\":1}\r\n\rdata: [DONE]\r\r";
        for step in 1..input.len() {
            assert_eq!(
                events_in(input, step).unwrap(),
                [data("a\nb"), data("{\"c\":1}"), Event::Done],
                "step {step}"
            );
        }
    }

    #[test]
    fn lines_are_capped() {
        let long = format!("data: {}\n\n", "x".repeat(100));
        let mut p = EventParser::with_max_line(50);
        p.feed(long.as_bytes());
        assert_eq!(
            p.next_event().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        // Without a line end yet, a line over the cap is refused as soon as it is.
        let mut p = EventParser::with_max_line(50);
        p.feed(&[b'x'; 60]);
        assert!(p.next_event().is_err());
        let mut ok = EventParser::with_max_line(200);
        ok.feed(long.as_bytes());
        assert!(matches!(ok.next_event().unwrap(), Some(Event::Data(d)) if d.len() == 100));
        // Many short `data:` lines of one event are capped together.
        let many = "data: xxxxxxxxxx\n".repeat(30) + "\n";
        let mut p = EventParser::with_max_line(200);
        p.feed(many.as_bytes());
        let e = p.next_event().unwrap_err();
        assert!(e.to_string().contains("event too long"), "{e}");
        let mut ok = EventParser::with_max_line(400);
        ok.feed(many.as_bytes());
        assert!(matches!(ok.next_event().unwrap(), Some(Event::Data(d)) if d.len() == 30 * 11 - 1));
    }

    #[test]
    fn the_buffer_keeps_only_the_unfinished_line() {
        let mut p = EventParser::new();
        for _ in 0..1000 {
            p.feed(b"data: x\n\n: ka\n");
            assert_eq!(p.next_event().unwrap(), Some(data("x")));
            assert_eq!(p.next_event().unwrap(), None);
        }
        assert!(p.buf.len() < 64, "{}", p.buf.len());
    }

    #[test]
    fn bytes_that_are_not_utf8_are_read_as_replacement_characters() {
        // A character cut between two events, and bytes that are never UTF-8.
        let input =
            b"data: {\"c\":\"caf\xc3\"}\n\ndata: {\"c\":\"\xa9 \xff\xfe ok\"}\n\ndata: [DONE]\n\n";
        for step in 1..input.len() {
            assert_eq!(
                events_in(input, step).unwrap(),
                [
                    data("{\"c\":\"caf\u{fffd}\"}"),
                    data("{\"c\":\"\u{fffd} \u{fffd}\u{fffd} ok\"}"),
                    Event::Done
                ],
                "step {step}"
            );
        }
        // In a line the parser skips, and in the last event without its blank line.
        assert_eq!(
            events(b": \xff\nevent: \xfe\ndata: a\xffb"),
            [data("a\u{fffd}b")]
        );
    }

    #[test]
    fn frames() {
        assert_eq!(frame("{\"a\":1}"), b"data: {\"a\":1}\n\n");
        assert_eq!(frame("a\nb"), b"data: a\ndata: b\n\n");
        // What the writer writes, the parser reads back.
        let payload = "line1\nline2";
        assert_eq!(events(&frame(payload)), [data(payload)]);
        assert_eq!(events(DONE), [Event::Done]);
    }
}
