//! sigorest: a small, synchronous, OpenAI-compatible LLM gateway for a home or office network.
//!
//! The contract is `design.md` (flags, files, endpoints, errors). The pure parts — catalog,
//! access lists, memory, sessions, breakers, request building, error mapping — know nothing of
//! sockets; [`http`] owns the sockets and HTTP framing, `upstream` owns the calls to providers.

#![forbid(unsafe_code)]

pub mod access;
pub mod app;
pub mod bench;
pub mod breaker;
pub mod catalog;
pub mod certs;
pub mod chat;
pub mod cli;
pub mod clock;
pub mod completion;
pub mod config;
pub mod env;
pub mod error;
pub mod fsutil;
pub mod gateway;
pub mod http;
pub mod logging;
pub mod memory;
pub mod ollama;
mod relay;
pub mod retry;
pub mod session;
pub mod sse;
pub mod upstream;

pub use error::Error;

/// The version printed by `-version` and reported by `/api/health`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
