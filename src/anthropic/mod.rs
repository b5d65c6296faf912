//! The Anthropic Messages format, mapped onto the OpenAI chat format that sigorest sends
//! every provider, and back: requests ([`request`]), complete answers ([`answer`]),
//! streams ([`stream`]) and errors ([`error`]). Pure: no sockets; `api::messages` is the
//! endpoint.

pub mod answer;
pub mod error;
pub mod request;
pub mod stream;

#[cfg(test)]
mod tests;
