//! sigorest: a small, synchronous, OpenAI-compatible LLM gateway for a home or office network.
//!
//! The contract is `design.md` (flags, files, endpoints, errors); the README says how the code
//! is laid out. The public API is what the binaries and the integration tests need:
//!
//! - [`server`]: start the gateway ([`server::start`], [`server::start_on`] for tests on port
//!   0) and run it under signals ([`server::run`]), from a [`config::Config`] and an
//!   [`env::Env`].
//! - [`cli`]: `sigoe`, the command-line client.
//! - [`http`]: the HTTP/1.1 server layer on its own (the example server and its tests use it).
//! - [`Error`], [`VERSION`], and in [`parts`] the few building blocks that the tests and the
//!   benchmark use directly.
//!
//! Everything else is private to the crate.

#![forbid(unsafe_code)]

mod anthropic;
mod api;
mod chat;
pub mod cli;
pub mod config;
pub mod env;
pub mod error;
mod gateway;
pub mod http;
mod ledger;
mod limits;
pub mod logging;
mod responses;
mod rt;
pub mod server;
mod state;
mod upstream;
mod util;

pub use error::Error;
pub use gateway::Gateway;
/// For the binaries' `-h` and `-version`.
pub use util::stdout::print_to_stdout;

/// Building blocks that the integration tests and the benchmark use on their own.
pub mod parts {
    pub use crate::state::catalog::Catalog;
    pub use crate::upstream::ollama::{Lookup, Ollama};
    pub use crate::util::clock::{Clock, ManualClock, SystemClock};
    pub use crate::util::lock;
}

/// The version printed by `-version` and reported by `/api/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
