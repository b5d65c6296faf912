//! The OpenAI Responses API (its stateless subset), mapped onto the OpenAI chat format that
//! sigorest sends every provider, and back: requests ([`request`]), complete answers
//! ([`answer`]) and streams ([`stream`]). Errors keep OpenAI's shape, as for chat
//! completions. Pure: no sockets; `api::responses` is the endpoint.

pub mod answer;
pub mod request;
pub mod stream;

#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;
