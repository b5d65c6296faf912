//! Log lines on stderr, as text or JSON.
//!
//! Text: `2026-11-21T12:00:00Z INFO  message key=value ...`. JSON (`-j`): one object a line
//! with `time`, `level`, `msg` and the record's key-values as fields. Key-values come from
//! `log`'s `kv` feature: `info!(status = 200, model = "gpt41"; "request")`. Values with
//! spaces, `=` or quotes are quoted in text. rustls and ureq below WARN are filtered out.
//! Each line is written with one `write` call, so lines from threads never interleave.

/// Installs the logger (once; later calls are ignored).
pub fn init(level: log::LevelFilter, json: bool) {
    let _ = (level, json);
    todo!()
}

/// RFC 3339 UTC time with seconds, `2026-11-21T12:00:00Z`, from Unix seconds.
pub fn rfc3339(unix_secs: u64) -> String {
    let _ = unix_secs;
    todo!()
}
