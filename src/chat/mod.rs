//! A chat completion in OpenAI's format, with no sockets: the client's request checked and
//! turned into the body sent upstream, the provider's answer and stream read, a provider's
//! error read, and Server-Sent Events framed. The server's endpoints and `sigoe` share it.

pub mod answer;
pub mod fields;
pub mod halves;
pub mod parts;
pub mod prepared;
pub mod provider_error;
pub mod request;
pub mod sse;
pub mod stream;
pub mod tokens;
pub mod tool_calls;
pub mod upstream_body;
pub mod usage;
