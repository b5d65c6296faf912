//! `sigorest-bench`: what the gateway adds on top of its upstream.
//!
//! The bench starts an instant fake upstream in-process ([`fake`]), the sigorest release
//! binary pointed at it ([`gateway`]), and drives load over keep-alive connections at
//! several concurrency levels, both straight to the fake (the ceiling: what the load
//! generator and the fake manage on this machine) and through the gateway ([`load`]). It
//! reports per level requests/s, latency percentiles and the latency the gateway adds; for
//! streams the time to the first event and the delay of every event; the gateway's memory
//! and threads; and the wall time of many parallel calls to a slow model ([`report`],
//! [`markdown`]), against the goals of issue 19 ([`targets`]). Another gateway, given by
//! URL or by command ([`subject`], [`cmdline`]), can be measured beside sigorest with the
//! same fake upstream, load and bodies ([`run`]), each level several times if asked
//! ([`rounds`]).

use std::process::ExitCode;
use std::sync::OnceLock;
use std::time::Instant;

mod args;
mod cmdline;
mod fake;
mod gateway;
mod load;
mod markdown;
mod report;
mod rounds;
mod run;
mod subject;
mod targets;
#[cfg(test)]
mod tests;

pub use args::{Command, Options, parse_args, usage};
pub use run::{run, serve_fake};

/// Why the bench could not run.
#[derive(Debug)]
pub enum BenchError {
    /// A bad flag or value (exit status 2).
    Usage(String),
    /// The gateway could not be started or died.
    Gateway(String),
    Io {
        doing: String,
        error: std::io::Error,
    },
}

impl BenchError {
    fn io(doing: &str, error: std::io::Error) -> BenchError {
        BenchError::Io {
            doing: doing.to_string(),
            error,
        }
    }
}

impl std::fmt::Display for BenchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BenchError::Usage(m) | BenchError::Gateway(m) => f.write_str(m),
            BenchError::Io { doing, error } => write!(f, "{doing}: {error}"),
        }
    }
}

impl std::error::Error for BenchError {}

/// The instant all stamps count from.
fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Nanoseconds since [`epoch`].
pub(crate) fn since_epoch() -> u64 {
    u64::try_from(epoch().elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The first position of `needle` in `hay`.
pub(crate) fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

const MESSAGES: &str = r#""messages":[{"role":"user","content":"Hello! Say hello back."}]"#;

/// A chat-completions body for `model` (the same for every target but the model's name).
pub(crate) fn body(model: &str, stream: bool) -> String {
    let model = serde_json::Value::from(model);
    let stream = if stream { r#","stream":true"# } else { "" };
    format!(r#"{{"model":{model},{MESSAGES}{stream}}}"#)
}

fn main() -> ExitCode {
    let opts = match parse_args(std::env::args_os().skip(1).collect()) {
        Ok(Command::Run(opts)) => opts,
        Ok(Command::Help) => {
            println!("{}", usage());
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("sigorest-bench: {e}");
            return ExitCode::from(2);
        }
    };
    let out = &mut std::io::stdout().lock();
    let done = match opts.serve_fake {
        true => serve_fake(&opts, out, &std::sync::atomic::AtomicBool::new(false)),
        false => run(&opts, out).map(drop),
    };
    match done {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sigorest-bench: {e}");
            match e {
                BenchError::Usage(_) => ExitCode::from(2),
                _ => ExitCode::from(1),
            }
        }
    }
}
