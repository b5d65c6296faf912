//! sigorest's integration tests: one test binary (see `Cargo.toml`, `[[test]]`), one module
//! per area, a shared `support` module. Everything runs on 127.0.0.1 / ::1 and ports chosen
//! by the kernel.

mod support;

mod api;
mod certificates;
mod chat;
mod fake_upstream;
mod files;
mod hardening;
mod http;
mod keys;
mod llama;
mod messages;
mod metrics;
mod not_utf8;
mod ollama;
mod provider_shapes;
mod refusals;
mod responses;
mod routing;
mod service;
mod sigoe;
mod silent_streams;
mod streaming;
mod usage_file;
