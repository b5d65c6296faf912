//! Chat-completion requests as clients send them: checked, with sigorest's extensions taken
//! out (the body sent upstream is built in [`super::upstream_body`]). Pure: no sockets, no
//! files.
//!
//! The client's body is any OpenAI chat-completions body plus four extensions that are
//! removed before the upstream call: `session_id`, `timeout` (seconds), `retries`
//! (attempts in all) and `fallbacks` (models to try next). Upstream, messages go in this order: the memory block as a `system`
//! message, the session history, then the client's own messages, unchanged. Every other
//! field is passed through, except `model` (the upstream id), `temperature` (clamped into the
//! model's range) and `max_tokens` (clamped to the output limit, and renamed
//! `max_completion_tokens` for models that want that).

use std::time::Duration;

use serde_json::{Map, Value};

use super::answer::lenient_json;
use crate::error::Error;
use crate::state::session::{self, Message, call_ids};

/// Default for the `timeout` extension.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest `timeout` `sigoe` may ask for (the server's limit is its `-max-timeout` flag,
/// default [`DEFAULT_MAX_TIMEOUT`]).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The server's default `-max-timeout`.
pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// Default for the `retries` extension (attempts in all).
pub const DEFAULT_RETRIES: u32 = 3;
/// Most attempts a client may ask for.
pub const MAX_RETRIES: u32 = 10;
/// Most models a request may name in `fallbacks`.
pub const MAX_FALLBACKS: usize = 8;
/// Longest model name a request may give (no provider's id comes near it); a longer one
/// is refused instead of being echoed into error bodies and log lines.
pub const MAX_MODEL_NAME: usize = 256;
/// Anthropic allows this many `cache_control` marks in one request.
pub const MAX_CACHE_MARKS: usize = 4;

/// A validated client request, before a model is resolved.
#[derive(Debug, Clone)]
pub struct ChatRequest {
    /// The `model` as the client wrote it.
    pub model: String,
    pub session_id: Option<String>,
    pub timeout: Duration,
    pub retries: u32,
    pub stream: bool,
    /// Whether the client itself asked for `stream_options.include_usage`.
    pub client_wants_usage: bool,
    /// Models to try, in order, when the model asked for cannot answer (`fallbacks`);
    /// `None` when the request names none (the server's `-fallback` apply), an empty list
    /// when it asks for none.
    pub fallbacks: Option<Vec<String>>,
    /// A Messages request's extended thinking, on or off (`None` for the other APIs): sent
    /// as Z.ai's `thinking` switch to a Z.ai model only, whichever model ends up answering.
    pub thinking: Option<bool>,
    /// The messages and tools carry `cache_control` marks that the gateway itself kept (a
    /// Messages request to a Claude model): written to a Claude upstream only, so a fallback
    /// to another provider does not get a key it may refuse.
    pub cache_marks: bool,
    /// The answer is translated for another API (Messages, Responses), so all of it is
    /// read; a chat completion's goes to the client as it came.
    pub translated: bool,
    /// The length of the body the client sent (0 when translated from another API), to
    /// size the upstream body at once.
    pub(super) raw_len: usize,
    /// The body without the extensions; `model` and `messages` still as the client sent them.
    pub(super) body: Map<String, Value>,
}

impl ChatRequest {
    /// Validates a client body; `timeout` may be at most `max_timeout`. Errors are 400
    /// `invalid_request` with a message that says what to fix and, where there is one, the
    /// field in `param`.
    pub fn parse(raw: &[u8], max_timeout: Duration) -> Result<ChatRequest, Error> {
        let mut chat =
            ChatRequest::from_object(json_object(raw, "chat-completions")?, max_timeout)?;
        chat.raw_len = raw.len();
        Ok(chat)
    }

    /// Validates a body already read as a JSON object (the other APIs' bodies, translated).
    pub fn from_object(
        mut body: Map<String, Value>,
        max_timeout: Duration,
    ) -> Result<ChatRequest, Error> {
        let model = model_name(body.get("model"))?;
        check_messages(body.get("messages"))?;
        let session_id = session_id(body.shift_remove("session_id"))?;
        let timeout = timeout(body.shift_remove("timeout"), max_timeout)?;
        let retries = retries(body.shift_remove("retries"))?;
        let fallbacks = fallbacks(body.shift_remove("fallbacks"))?;
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(Error::invalid_param(
                    "stream",
                    "'stream' must be true or false",
                ));
            }
        };
        let client_wants_usage = match body.get("stream_options") {
            None | Some(Value::Null) => false,
            Some(Value::Object(o)) => o.get("include_usage") == Some(&Value::Bool(true)),
            Some(_) => {
                return Err(Error::invalid_param(
                    "stream_options",
                    "'stream_options' must be an object",
                ));
            }
        };
        check_numbers(&body)?;
        Ok(ChatRequest {
            model,
            session_id,
            timeout,
            retries,
            stream,
            client_wants_usage,
            fallbacks,
            thinking: None,
            cache_marks: false,
            translated: false,
            raw_len: 0,
            body,
        })
    }

    /// The client's messages.
    pub fn messages(&self) -> &[Value] {
        self.body
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or(&[])
    }

    /// The client's `tools`, if any.
    pub fn tools(&self) -> Option<&Value> {
        self.body.get("tools")
    }

    /// The client's side of a session turn, to keep after `history`: its last `user`
    /// message, with the tool results right before it (an Anthropic client's `tool_result`
    /// blocks come so) and the assistant turn that called those tools; when the request
    /// ends with tool results, everything from the last `user` message on. An assistant
    /// turn the session already ends with (a client that sends it again) is not kept twice.
    pub fn turn_input(&self, history: &[Message]) -> Vec<Message> {
        let messages = self.messages();
        let role = |i: usize| messages.get(i).and_then(|m| m["role"].as_str());
        let last_user = messages.iter().rposition(|m| m["role"] == "user");
        let (mut from, to) = match (last_user, messages.last()) {
            (_, Some(m)) if m["role"] == "tool" => (last_user.unwrap_or(0), messages.len()),
            (Some(u), _) => (u, u + 1),
            (None, _) => return Vec::new(),
        };
        while from > 0 && role(from - 1) == Some("tool") {
            from -= 1;
        }
        if from > 0 && role(from) == Some("tool") && role(from - 1) == Some("assistant") {
            from -= 1;
        }
        let kept_last = history.last().map(Message::call_ids).unwrap_or_default();
        messages[from..to]
            .iter()
            .filter(|m| matches!(m["role"].as_str(), Some("user" | "assistant" | "tool")))
            .filter(|m| {
                m["role"] != "assistant"
                    || kept_last.is_empty()
                    || call_ids(m.get("tool_calls")) != kept_last
            })
            .map(|m| {
                let role = m["role"].as_str().unwrap_or("user");
                Message {
                    tool_calls: m
                        .get("tool_calls")
                        .filter(|c| role == "assistant" && c.is_array())
                        .cloned(),
                    tool_call_id: m["tool_call_id"]
                        .as_str()
                        .filter(|_| role == "tool")
                        .map(str::to_string),
                    // An assistant turn of calls alone: kept as "" (as the gateway's own).
                    ..Message::new(
                        role,
                        match m.get("content") {
                            None | Some(Value::Null) if role == "assistant" => {
                                Value::String(String::new())
                            }
                            c => c.cloned().unwrap_or(Value::Null),
                        },
                    )
                }
            })
            .collect()
    }
}

/// `temperature` and `top_p` of another API's body, copied into the chat body `out` when
/// they are numbers (the translators of Messages and Responses share it).
pub(crate) fn sampling(
    body: &Map<String, Value>,
    out: &mut Map<String, Value>,
) -> Result<(), Error> {
    for field in ["temperature", "top_p"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(v @ Value::Number(_)) => {
                out.insert(field.into(), v.clone());
            }
            Some(_) => {
                return Err(Error::invalid_param(
                    field,
                    format!("{field}: must be a number"),
                ));
            }
        }
    }
    Ok(())
}

/// A request body that must be one JSON object (`what` names the API, for the message).
pub fn json_object(raw: &[u8], what: &str) -> Result<Map<String, Value>, Error> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(Error::invalid(format!(
            "request body is empty: send a JSON {what} body"
        )));
    }
    let text = std::str::from_utf8(raw).map_err(|e| {
        Error::invalid(format!(
            "request body is not valid UTF-8 (bad byte at offset {})",
            e.valid_up_to()
        ))
    })?;
    match client_json(text) {
        Ok(Value::Object(body)) => Ok(body),
        Ok(_) => Err(Error::invalid("request body must be a JSON object")),
        Err(e) => Err(Error::invalid(format!(
            "request body is not valid JSON: {e}"
        ))),
    }
}

/// A client's JSON body, with each lone UTF-16 surrogate escape (half an emoji: what
/// JavaScript's `JSON.stringify` writes for a string cut between the two halves of a
/// pair, as an agent cutting a tool output at a character count does) read as U+FFFD, as
/// the gateway reads provider answers (see [`lenient_json`]).
pub(crate) fn client_json(text: &str) -> Result<Value, serde_json::Error> {
    lenient_json(text)
}

pub(crate) fn model_name(model: Option<&Value>) -> Result<String, Error> {
    match model {
        Some(Value::String(m)) if m.trim().len() > MAX_MODEL_NAME => Err(Error::invalid_param(
            "model",
            format!("'model' is longer than {MAX_MODEL_NAME} bytes"),
        )),
        Some(Value::String(m)) if !m.trim().is_empty() => Ok(m.trim().to_string()),
        Some(Value::String(_)) => Err(Error::invalid_param("model", "'model' is empty")),
        Some(_) => Err(Error::invalid_param("model", "'model' must be a string")),
        None => Err(Error::invalid_param("model", "'model' is required")),
    }
}

fn session_id(value: Option<Value>) -> Result<Option<String>, Error> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(id)) => {
            session::validate_id(&id)?;
            Ok(Some(id))
        }
        Some(_) => Err(Error::invalid_param(
            "session_id",
            "'session_id' must be a string",
        )),
    }
}

/// The `timeout` of a request that sets none: [`DEFAULT_TIMEOUT`] within the gateway's
/// maximum (`-max-timeout 120` makes it 120 s).
pub(crate) fn default_timeout(max_timeout: Duration) -> Duration {
    DEFAULT_TIMEOUT.min(max_timeout)
}

pub(crate) fn timeout(value: Option<Value>, max_timeout: Duration) -> Result<Duration, Error> {
    match value {
        None | Some(Value::Null) => Ok(default_timeout(max_timeout)),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(s) if s > 0.0 && s <= max_timeout.as_secs_f64() => Ok(Duration::from_secs_f64(s)),
            _ => Err(Error::invalid_param(
                "timeout",
                format!(
                    "'timeout' must be a number of seconds above 0 and at most {}",
                    max_timeout.as_secs()
                ),
            )),
        },
        Some(_) => Err(Error::invalid_param(
            "timeout",
            "'timeout' must be a number of seconds",
        )),
    }
}

pub(crate) fn retries(value: Option<Value>) -> Result<u32, Error> {
    match value {
        None | Some(Value::Null) => Ok(DEFAULT_RETRIES),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(r) if (1..=u64::from(MAX_RETRIES)).contains(&r) => Ok(r as u32),
            _ => Err(Error::invalid_param(
                "retries",
                format!("'retries' must be a whole number of attempts from 1 to {MAX_RETRIES}"),
            )),
        },
        Some(_) => Err(Error::invalid_param(
            "retries",
            "'retries' must be a whole number",
        )),
    }
}

/// `fallbacks`: a list of model names (at most [`MAX_FALLBACKS`]); `None` when absent.
fn fallbacks(value: Option<Value>) -> Result<Option<Vec<String>>, Error> {
    let bad = || {
        Error::invalid_param(
            "fallbacks",
            format!("'fallbacks' must be a list of at most {MAX_FALLBACKS} model names"),
        )
    };
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(list)) if list.len() <= MAX_FALLBACKS => list
            .into_iter()
            .map(|v| match v {
                Value::String(s) if !s.trim().is_empty() && s.trim().len() <= MAX_MODEL_NAME => {
                    Ok(s.trim().to_string())
                }
                _ => Err(bad()),
            })
            .collect::<Result<_, _>>()
            .map(Some),
        Some(_) => Err(bad()),
    }
}

/// `temperature` must be a number; token limits whole numbers above 0.
fn check_numbers(body: &Map<String, Value>) -> Result<(), Error> {
    match body.get("temperature") {
        None | Some(Value::Null) | Some(Value::Number(_)) => {}
        Some(_) => {
            return Err(Error::invalid_param(
                "temperature",
                "'temperature' must be a number",
            ));
        }
    }
    for field in ["max_tokens", "max_completion_tokens"] {
        match body.get(field) {
            None | Some(Value::Null) => {}
            Some(Value::Number(n)) if n.as_u64().is_some_and(|v| v > 0) => {}
            Some(_) => {
                return Err(Error::invalid_param(
                    field,
                    format!(
                        "'{field}' must be a whole number above 0 (leave it out for the model's default)"
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// `messages` must be a non-empty array of objects, each with a string `role`.
fn check_messages(messages: Option<&Value>) -> Result<(), Error> {
    let list = match messages {
        Some(Value::Array(list)) => list,
        Some(_) => {
            return Err(Error::invalid_param(
                "messages",
                "'messages' must be an array",
            ));
        }
        None => return Err(Error::invalid_param("messages", "'messages' is required")),
    };
    if list.is_empty() {
        return Err(Error::invalid_param(
            "messages",
            "'messages' must hold at least one message",
        ));
    }
    for (i, m) in list.iter().enumerate() {
        let Value::Object(m) = m else {
            return Err(Error::invalid_param(
                "messages",
                format!("messages[{i}] must be an object"),
            ));
        };
        match m.get("role") {
            Some(Value::String(r)) if !r.is_empty() => {}
            _ => {
                return Err(Error::invalid_param(
                    "messages",
                    format!("messages[{i}].role must be a non-empty string"),
                ));
            }
        }
        match m.get("content") {
            None | Some(Value::Null) | Some(Value::String(_)) | Some(Value::Array(_)) => {}
            Some(_) => {
                return Err(Error::invalid_param(
                    "messages",
                    format!("messages[{i}].content must be a string, an array of parts or null"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<ChatRequest, Error> {
        ChatRequest::parse(&serde_json::to_vec(&v).unwrap(), MAX_TIMEOUT)
    }

    fn hello(model: &str) -> Value {
        json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
    }

    #[test]
    fn half_an_emoji_in_a_body_is_read_as_u_fffd() {
        // JavaScript's JSON.stringify("x😀".slice(0, 2)): a high half with no low half.
        let body = br#"{"model":"gpt41","messages":[{"role":"user","content":"x\ud83d"}]}"#;
        let chat = ChatRequest::parse(body, MAX_TIMEOUT).unwrap();
        assert_eq!(chat.messages()[0]["content"], "x\u{fffd}");
        let low =
            br#"{"model":"gpt41","messages":[{"role":"user","content":"\ude00 \ud83d\ude00"}]}"#;
        let chat = ChatRequest::parse(low, MAX_TIMEOUT).unwrap();
        assert_eq!(chat.messages()[0]["content"], "\u{fffd} \u{1f600}");
        let obj = json_object(br#"{"a":"\ud800","b":"\\ud800"}"#, "x").unwrap();
        assert_eq!(
            (&obj["a"], &obj["b"]),
            (&json!("\u{fffd}"), &json!("\\ud800"))
        );
        // Broken otherwise: still a 400, saying what is broken (not the escape).
        let broken = br#"{"model":"gpt41","messages":[{"role":"user","content":"\ud83d"}]"#;
        let err = ChatRequest::parse(broken, MAX_TIMEOUT).unwrap_err();
        assert_eq!(err.status(), 400);
        assert!(err.to_string().contains("EOF while parsing"), "{err}");
    }

    #[test]
    fn bad_bodies_are_400_with_a_reason() {
        let cases: Vec<(&[u8], &str)> = vec![
            (b"", "empty"),
            (b"   \n", "empty"),
            (b"{not json", "not valid JSON"),
            (b"\xff\xfe{}", "UTF-8"),
            (b"[1,2]", "JSON object"),
            (b"\"str\"", "JSON object"),
            (
                br#"{"messages":[{"role":"user","content":"x"}]}"#,
                "'model' is required",
            ),
            (
                br#"{"model":5,"messages":[{"role":"user","content":"x"}]}"#,
                "'model' must be a string",
            ),
            (
                br#"{"model":" ","messages":[{"role":"user","content":"x"}]}"#,
                "empty",
            ),
            (br#"{"model":"gpt41"}"#, "'messages' is required"),
            (br#"{"model":"gpt41","messages":{}}"#, "must be an array"),
            (br#"{"model":"gpt41","messages":[]}"#, "at least one"),
            (
                br#"{"model":"gpt41","messages":[5]}"#,
                "messages[0] must be an object",
            ),
            (br#"{"model":"gpt41","messages":[{"content":"x"}]}"#, "role"),
            (
                br#"{"model":"gpt41","messages":[{"role":"user","content":5}]}"#,
                "content",
            ),
        ];
        for (body, needle) in cases {
            let err = ChatRequest::parse(body, MAX_TIMEOUT).unwrap_err();
            assert_eq!(err.status(), 400, "{body:?}");
            assert_eq!(err.code(), "invalid_request");
            assert!(
                err.to_string().contains(needle),
                "{:?}: {err}",
                String::from_utf8_lossy(body)
            );
        }
    }

    #[test]
    fn extension_types_are_checked() {
        let with = |k: &str, v: Value| {
            let mut b = hello("gpt41");
            b[k] = v;
            parse(b)
        };
        for (k, v) in [
            ("session_id", json!(5)),
            ("session_id", json!("../etc/passwd")),
            ("session_id", json!("")),
            ("timeout", json!("10")),
            ("timeout", json!(0)),
            ("timeout", json!(-1)),
            ("timeout", json!(100000)),
            ("retries", json!(0)),
            ("retries", json!(1.5)),
            ("retries", json!(11)),
            ("retries", json!("3")),
            ("stream", json!("yes")),
            ("stream_options", json!(true)),
            ("temperature", json!("hot")),
            ("max_tokens", json!(0)),
            ("max_tokens", json!(-5)),
            ("max_tokens", json!("100")),
            ("max_completion_tokens", json!(1.5)),
            ("fallbacks", json!("kimi")),
            ("fallbacks", json!([5])),
            ("fallbacks", json!([""])),
            ("fallbacks", json!(["m".repeat(MAX_MODEL_NAME + 1)])),
            ("model", json!("m".repeat(MAX_MODEL_NAME + 1))),
            (
                "fallbacks",
                json!(["a", "b", "c", "d", "e", "f", "g", "h", "i"]),
            ),
        ] {
            let err = with(k, v.clone()).unwrap_err();
            assert_eq!(err.status(), 400, "{k}={v}");
            assert_eq!(err.param(), Some(k), "{k}={v}: {err}");
        }
        let ok = with("timeout", json!(2.5)).unwrap();
        assert_eq!(ok.timeout, Duration::from_millis(2500));
        assert_eq!(with("retries", json!(1)).unwrap().retries, 1);
        assert_eq!(
            with("session_id", json!("abc.DEF_1-2"))
                .unwrap()
                .session_id
                .as_deref(),
            Some("abc.DEF_1-2")
        );
        let d = parse(hello("gpt41")).unwrap();
        assert_eq!(
            (d.timeout, d.retries, d.stream, d.session_id),
            (DEFAULT_TIMEOUT, 3, false, None)
        );
        // Under a -max-timeout below 180 s, a request without `timeout` gets that maximum
        // (it used to get 180, above what the gateway allows).
        let lower = Duration::from_secs(120);
        let body = serde_json::to_vec(&hello("gpt41")).unwrap();
        assert_eq!(ChatRequest::parse(&body, lower).unwrap().timeout, lower);
    }

    #[test]
    fn the_client_side_of_a_session_turn() {
        let turn = |messages: Value, history: &[Message]| -> Vec<Value> {
            let req = parse(json!({"model": "m", "messages": messages})).unwrap();
            req.turn_input(history)
                .iter()
                .map(|m| serde_json::to_value(m).unwrap())
                .collect()
        };
        let call = json!([{"id": "c1", "type": "function",
            "function": {"name": "f", "arguments": "{}"}}]);
        let calls_turn = Message {
            tool_calls: Some(call.clone()),
            ..Message::new("assistant", json!(""))
        };
        // The last user message alone (a prefill after it is not the client's turn).
        assert_eq!(
            turn(
                json!([{"role": "user", "content": "first"}, {"role": "assistant", "content": "a"},
                    {"role": "user", "content": [{"type": "text", "text": "second"}]},
                    {"role": "assistant", "content": "prefill"}]),
                &[]
            ),
            [json!({"role": "user", "content": [{"type": "text", "text": "second"}]})]
        );
        // Tool results alone, after a session that ends with the call.
        assert_eq!(
            turn(
                json!([{"role": "tool", "tool_call_id": "c1", "content": "t"}]),
                std::slice::from_ref(&calls_turn)
            ),
            [json!({"role": "tool", "content": "t", "tool_call_id": "c1"})]
        );
        // The call sent again with its results: kept once.
        let again = json!([{"role": "system", "content": "s"},
            {"role": "assistant", "content": null, "tool_calls": call},
            {"role": "tool", "tool_call_id": "c1", "content": "t"}]);
        assert_eq!(turn(again.clone(), &[calls_turn]).len(), 1);
        // ... and kept when the session does not have it.
        assert_eq!(
            turn(again, &[]),
            [
                json!({"role": "assistant", "content": "", "tool_calls": call}),
                json!({"role": "tool", "content": "t", "tool_call_id": "c1"})
            ]
        );
        // A question, the call and its result in one request: all three.
        assert_eq!(
            turn(
                json!([{"role": "user", "content": "q"},
                    {"role": "assistant", "content": "Looking", "tool_calls": call},
                    {"role": "tool", "tool_call_id": "c1", "content": "t"}]),
                &[]
            )
            .len(),
            3
        );
        // Anthropic's order: the results, then more text from the user.
        assert_eq!(
            turn(
                json!([{"role": "tool", "tool_call_id": "c1", "content": "t"},
                    {"role": "user", "content": "and?"}]),
                &[]
            ),
            [
                json!({"role": "tool", "content": "t", "tool_call_id": "c1"}),
                json!({"role": "user", "content": "and?"})
            ]
        );
        // Nothing of the client's to keep.
        assert!(turn(json!([{"role": "system", "content": "s"}]), &[]).is_empty());
    }
}
