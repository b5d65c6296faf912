//! Server-Sent Events as providers send them, and as the gateway relays them.
//!
//! The reader takes what providers really send: `\n` or `\r\n` line ends, `:` comment lines
//! (keep-alives), `event:`, `id:` and `retry:` lines (ignored), several `data:` lines in one
//! event (joined with `\n`), events split across reads, and a last event without the blank
//! line that should end it. Lines are capped, so a provider cannot make the gateway buffer
//! without bound.
//!
//! The wait for each data event can be bounded ([`EventReader::with_waits`]): comments and
//! other lines do not extend it, so a provider that sends only `: keep-alive` still times
//! out. The reader checks the deadline itself between lines and tells its source (which
//! bounds a blocked read by it) through a callback.

use std::io::{self, BufRead};
use std::time::{Duration, Instant};

/// Longest line the reader accepts (a chunk carrying a big tool-call argument or an image).
pub const MAX_LINE: usize = 8 * 1024 * 1024;

/// One event's payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// `data: <payload>` (lines joined).
    Data(String),
    /// `data: [DONE]`: the end of an OpenAI stream.
    Done,
}

/// Tells the source of the bytes by when the next data event is due (so that a blocked
/// read returns then); `None`: no bound.
pub type Arm = Box<dyn FnMut(Option<Instant>) + Send>;

/// Reads events from a byte stream.
pub struct EventReader<R> {
    inner: R,
    line: Vec<u8>,
    max_line: usize,
    waits: Option<Waits>,
}

/// How long each data event may take.
struct Waits {
    /// From the start of each wait.
    gap: Duration,
    /// The deadline of the next wait, instead of `gap` from its start.
    next: Option<Instant>,
    arm: Arm,
}

impl<R: BufRead> EventReader<R> {
    pub fn new(inner: R) -> EventReader<R> {
        EventReader {
            inner,
            line: Vec::new(),
            max_line: MAX_LINE,
            waits: None,
        }
    }

    #[cfg(test)]
    /// With a smaller line cap (tests).
    pub fn with_max_line(inner: R, max_line: usize) -> EventReader<R> {
        EventReader {
            max_line,
            ..EventReader::new(inner)
        }
    }

    /// Bounds each wait for a data event by `gap` from its start: past it, `next_event`
    /// fails with [`io::ErrorKind::TimedOut`], however many other lines arrived meanwhile.
    /// `arm` is told each deadline before the reading starts.
    pub fn with_waits(mut self, gap: Duration, arm: Arm) -> EventReader<R> {
        self.waits = Some(Waits {
            gap,
            next: None,
            arm,
        });
        self
    }

    /// The next wait ends at `at` instead (the first event of a stream, due within the
    /// request's timeout however long the connection took).
    pub fn wait_until(&mut self, at: Instant) {
        if let Some(w) = &mut self.waits {
            w.next = Some(at);
        }
    }

    /// Starts a wait: its deadline, told to the source.
    fn arm(&mut self) -> Option<Instant> {
        let w = self.waits.as_mut()?;
        let deadline = w.next.take().unwrap_or_else(|| Instant::now() + w.gap);
        (w.arm)(Some(deadline));
        Some(deadline)
    }

    /// After `[DONE]`: reads what is left up to the end of the
    /// stream, within `within` and at most `max` bytes, so that the connection can serve
    /// another request. True when the end was reached.
    pub fn drain(&mut self, within: Duration, max: usize) -> bool {
        if let Some(w) = &mut self.waits {
            (w.arm)(Some(Instant::now() + within));
        }
        let deadline = Instant::now() + within;
        let mut read = 0;
        while read <= max && Instant::now() < deadline {
            match self.inner.fill_buf() {
                Ok([]) => return true,
                Ok(buf) => {
                    let n = buf.len();
                    self.inner.consume(n);
                    read += n;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        false
    }

    /// The next event; `Ok(None)` at the end of the stream. An event cut off by the end of
    /// the stream (no blank line) is still returned.
    pub fn next_event(&mut self) -> io::Result<Option<Event>> {
        let deadline = self.arm();
        // The source ends a blocked read at the deadline with an error of its own kind; a
        // few milliseconds of slack allow for a timer that fires a little early.
        let over = |slack: Duration| deadline.is_some_and(|d| Instant::now() + slack >= d);
        let timed_out = || io::Error::new(io::ErrorKind::TimedOut, "no event within the timeout");
        let mut data: Option<String> = None;
        loop {
            if data.is_none() && over(Duration::ZERO) {
                return Err(timed_out());
            }
            let eof = match self.read_line() {
                Ok(more) => !more,
                Err(_) if over(Duration::from_millis(5)) => return Err(timed_out()),
                Err(e) => return Err(e),
            };
            let line = trim_eol(&self.line);
            if line.is_empty() {
                if let Some(d) = data.take() {
                    return Ok(Some(to_event(d)));
                }
                if eof {
                    return Ok(None);
                }
                continue;
            }
            let text = std::str::from_utf8(line).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidData, "event stream is not UTF-8")
            })?;
            if let Some(value) = field(text, "data") {
                match &mut data {
                    // Many `data:` lines make one event: it is capped as a line is.
                    Some(d) if d.len() + 1 + value.len() > self.max_line => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "event stream event too long",
                        ));
                    }
                    Some(d) => {
                        d.push('\n');
                        d.push_str(value);
                    }
                    None => data = Some(value.to_string()),
                }
            }
            // Comments (":...") and other fields (event, id, retry) carry nothing we relay.
            if eof {
                return Ok(data.map(to_event));
            }
        }
    }

    /// Reads one line (with its end) into `self.line`; `false` at the end of the stream.
    fn read_line(&mut self) -> io::Result<bool> {
        self.line.clear();
        loop {
            let buf = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if buf.is_empty() {
                return Ok(!self.line.is_empty());
            }
            let (take, done) = match buf.iter().position(|&b| b == b'\n') {
                Some(i) => (i + 1, true),
                None => (buf.len(), false),
            };
            if self.line.len() + take > self.max_line {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "event stream line too long",
                ));
            }
            self.line.extend_from_slice(&buf[..take]);
            self.inner.consume(take);
            if done {
                return Ok(true);
            }
        }
    }
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
    use std::io::{BufReader, Read};

    fn events(input: &[u8]) -> Vec<Event> {
        let mut r = EventReader::new(input);
        let mut out = Vec::new();
        while let Some(e) = r.next_event().unwrap() {
            out.push(e);
        }
        out
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

    /// A reader that hands out one byte per read, like a stream split at every position.
    struct Trickle<'a>(&'a [u8]);
    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.0[0];
            self.0 = &self.0[1..];
            Ok(1)
        }
    }

    #[test]
    fn events_split_across_reads() {
        let input = b"data: {\"long\":\"value\"}\r\n\r\ndata: [DONE]\r\n\r\n";
        let mut r = EventReader::new(BufReader::with_capacity(1, Trickle(input)));
        assert_eq!(r.next_event().unwrap(), Some(data("{\"long\":\"value\"}")));
        assert_eq!(r.next_event().unwrap(), Some(Event::Done));
        assert_eq!(r.next_event().unwrap(), None);
    }

    #[test]
    fn lines_are_capped() {
        let long = format!("data: {}\n\n", "x".repeat(100));
        let mut r = EventReader::with_max_line(long.as_bytes(), 50);
        assert_eq!(
            r.next_event().unwrap_err().kind(),
            io::ErrorKind::InvalidData
        );
        let mut ok = EventReader::with_max_line(long.as_bytes(), 200);
        assert!(matches!(ok.next_event().unwrap(), Some(Event::Data(d)) if d.len() == 100));
        // Many short `data:` lines of one event are capped together.
        let many = "data: xxxxxxxxxx\n".repeat(30) + "\n";
        let mut r = EventReader::with_max_line(many.as_bytes(), 200);
        let e = r.next_event().unwrap_err();
        assert!(e.to_string().contains("event too long"), "{e}");
        let mut ok = EventReader::with_max_line(many.as_bytes(), 400);
        assert!(matches!(ok.next_event().unwrap(), Some(Event::Data(d)) if d.len() == 30 * 11 - 1));
    }

    /// A source that hands out one line per read, as slowly as asked.
    struct Slow {
        lines: Vec<&'static [u8]>,
        pause: Duration,
    }
    impl Read for Slow {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.lines.is_empty() {
                return Ok(0);
            }
            std::thread::sleep(self.pause);
            let line = self.lines.remove(0);
            buf[..line.len()].copy_from_slice(line);
            Ok(line.len())
        }
    }

    #[test]
    fn keep_alive_comments_do_not_extend_the_wait_for_an_event() {
        let lines: Vec<&'static [u8]> = vec![b": keep-alive\n"; 50];
        let slow = Slow {
            lines,
            pause: Duration::from_millis(10),
        };
        let armed = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = armed.clone();
        let arm: Arm = Box::new(move |d| seen.lock().unwrap().push(d));
        let mut r = EventReader::new(BufReader::with_capacity(64, slow))
            .with_waits(Duration::from_millis(100), arm);
        let started = Instant::now();
        let err = r.next_event().unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // 50 comments 10 ms apart would take 500 ms; the wait ended at its 100 ms.
        assert!(
            started.elapsed() < Duration::from_millis(400),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(
            armed.lock().unwrap().len(),
            1,
            "the source was told the deadline"
        );
    }

    #[test]
    fn events_in_time_pass_and_each_wait_starts_afresh() {
        let slow = Slow {
            lines: vec![b"data: a\n", b"\n", b": ka\n", b"data: b\n\n"],
            pause: Duration::from_millis(5),
        };
        let mut r = EventReader::new(BufReader::with_capacity(64, slow))
            .with_waits(Duration::from_secs(5), Box::new(|_| {}));
        r.wait_until(Instant::now() + Duration::from_secs(5));
        assert_eq!(r.next_event().unwrap(), Some(data("a")));
        assert_eq!(r.next_event().unwrap(), Some(data("b")));
        assert!(r.drain(Duration::from_secs(1), 1024));
        // A wait that is already over fails at once.
        let mut late =
            EventReader::new(&b"data: x\n\n"[..]).with_waits(Duration::ZERO, Box::new(|_| {}));
        assert_eq!(
            late.next_event().unwrap_err().kind(),
            io::ErrorKind::TimedOut
        );
    }

    #[test]
    fn non_utf8_is_an_error_not_a_panic() {
        let mut r = EventReader::new(&b"data: \xff\xfe\n\n"[..]);
        assert!(r.next_event().is_err());
    }

    #[test]
    fn frames() {
        assert_eq!(frame("{\"a\":1}"), b"data: {\"a\":1}\n\n");
        assert_eq!(frame("a\nb"), b"data: a\ndata: b\n\n");
        // What the writer writes, the reader reads back.
        let payload = "line1\nline2";
        assert_eq!(events(&frame(payload)), [data(payload)]);
        assert_eq!(events(DONE), [Event::Done]);
    }
}
