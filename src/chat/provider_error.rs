//! A provider's own error, read the one way sigorest reads it everywhere: from an error
//! status's body, from an `{"error": ...}` object in a 2xx answer, and from an error event
//! inside a stream. Providers send OpenAI's `{"error": {"message", "type", "code", "param"}}`
//! but also `{"error": "text"}`, `{"message": ...}` and `{"detail": ...}`.

use serde_json::Value;

/// What a provider said about its error; `None` where it said nothing readable.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct ProviderError {
    pub message: Option<String>,
    pub kind: Option<String>,
    pub code: Option<String>,
    pub param: Option<String>,
}

impl ProviderError {
    /// Reads an error body (anything that is not one of the known shapes gives `None`s).
    pub fn from_body(body: &[u8]) -> ProviderError {
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return ProviderError::default();
        };
        let err = &v["error"];
        if err.is_object() {
            return ProviderError {
                message: text(&err["message"]),
                kind: text(&err["type"]),
                code: text(&err["code"]),
                param: text(&err["param"]),
            };
        }
        ProviderError {
            message: text(err)
                .or_else(|| text(&v["message"]))
                .or_else(|| text(&v["detail"])),
            ..ProviderError::default()
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The message of an `{"error": ...}` object, if this payload (a 2xx body or a stream
/// event) is one.
pub fn error_in(payload: &str) -> Option<String> {
    let v: Value = serde_json::from_str(payload).ok()?;
    v.get("error").map(member_message)
}

/// The message of an `error` member: an object's `message`, a string, or the value itself.
pub fn member_message(err: &Value) -> String {
    match err {
        Value::String(s) => s.clone(),
        Value::Object(o) => o
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| err.to_string()),
        other => other.to_string(),
    }
}

/// How a provider's own error message is told to the client.
pub fn reported(message: &str) -> String {
    format!("{REPORTED}{message}")
}

/// What [`reported`] puts before a provider's message.
pub const REPORTED: &str = "provider reported an error: ";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_every_known_shape() {
        let e = ProviderError::from_body(
            br#"{"error":{"message":"Invalid API key","type":"auth_error","code":"invalid_api_key","param":null}}"#,
        );
        assert_eq!(e.message.as_deref(), Some("Invalid API key"));
        assert_eq!(e.kind.as_deref(), Some("auth_error"));
        assert_eq!(e.code.as_deref(), Some("invalid_api_key"));
        assert_eq!(e.param, None);
        let code = ProviderError::from_body(br#"{"error":{"message":"m","code":1214}}"#);
        assert_eq!(code.code.as_deref(), Some("1214"));
        for (body, message) in [
            (&br#"{"error":"context too long"}"#[..], "context too long"),
            (br#"{"message":"nope"}"#, "nope"),
            (br#"{"detail":"Not Found"}"#, "Not Found"),
        ] {
            assert_eq!(
                ProviderError::from_body(body).message.as_deref(),
                Some(message)
            );
        }
        assert_eq!(
            ProviderError::from_body(b"<html>"),
            ProviderError::default()
        );
        assert_eq!(ProviderError::from_body(b"[1]"), ProviderError::default());
    }

    #[test]
    fn error_payloads() {
        assert_eq!(
            error_in(r#"{"error":{"message":"quota"}}"#).as_deref(),
            Some("quota")
        );
        assert_eq!(error_in(r#"{"error":"bad"}"#).as_deref(), Some("bad"));
        assert_eq!(error_in(r#"{"error":null}"#).as_deref(), Some("null"));
        assert_eq!(
            error_in(r#"{"error":{"code":5}}"#).as_deref(),
            Some(r#"{"code":5}"#)
        );
        assert_eq!(error_in(r#"{"choices":[]}"#), None);
        assert_eq!(error_in("junk"), None);
    }
}
