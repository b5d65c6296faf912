//! Shared harness for the integration tests (all of them compile into the one `tests` binary).
//!
//! - [`upstream`]: a scripted fake upstream — an OpenAI-compatible provider or an Ollama — on
//!   `127.0.0.1:0`, with its own tiny std-only HTTP/1.1 server (independent of `sigorest::http`,
//!   so the gateway never tests itself), that records every request and connection it sees.
//! - [`gateway`]: the gateway itself, started in-process on `127.0.0.1:0` with its own
//!   temporary directory, and a small client (ureq, statuses as data) to talk to it.
//! - [`llama`]: the stand-in llama-server (`examples/fake_llama_server.rs`) and its model
//!   file, whose neighbours steer it.

pub mod client;
pub mod gateway;
pub mod llama;
pub mod process;
pub mod upstream;
