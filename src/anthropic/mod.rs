//! The Anthropic Messages format, mapped onto the OpenAI chat format that sigorest sends
//! every provider, and back: requests ([`request`]), complete answers ([`answer`]),
//! streams ([`stream`]) and errors ([`error`]). Pure: no sockets; `api::messages` is the
//! endpoint.

pub mod answer;
pub mod error;
pub mod request;
pub mod stream;

/// The header with which Anthropic's API names each answer, error or not (its SDKs read it
/// into `_request_id`, and users quote it in bug reports).
pub const REQUEST_ID: &str = "request-id";

/// A fresh id for [`REQUEST_ID`], `req_…` as Anthropic's are.
pub fn request_id() -> String {
    crate::util::random_id("req_")
}

#[cfg(test)]
mod tests;
