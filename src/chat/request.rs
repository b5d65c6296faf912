//! Chat-completion requests: from the client's body to the body sent upstream, and from the
//! upstream's answer to the turn stored in a session. Pure: no sockets, no files.
//!
//! The client's body is any OpenAI chat-completions body plus three extensions that are
//! removed before the upstream call: `session_id`, `timeout` (seconds) and `retries`
//! (attempts in all). Upstream, messages go in this order: the memory block as a `system`
//! message, the session history, then the client's own messages, unchanged. Every other
//! field is passed through, except `model` (the upstream id), `temperature` (clamped into the
//! model's range) and `max_tokens` (clamped to the output limit, and renamed
//! `max_completion_tokens` for models that want that).

use std::time::Duration;

use serde_json::{Map, Value, json};

use crate::error::Error;
use crate::state::catalog::Model;
use crate::state::memory::Memory;
use crate::state::session::{self, Message};

/// Default for the `timeout` extension.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);
/// Longest `timeout` `sigoe` may ask for in direct mode; the server's limit is its
/// `-max-timeout` flag (default [`DEFAULT_MAX_TIMEOUT`]).
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The server's default `-max-timeout`: an abandoned request may hold a worker this long at
/// most (it is interrupted at once when its client is seen to leave).
pub const DEFAULT_MAX_TIMEOUT: Duration = Duration::from_secs(600);
/// Default for the `retries` extension (attempts in all).
pub const DEFAULT_RETRIES: u32 = 3;
/// Most attempts a client may ask for.
pub const MAX_RETRIES: u32 = 10;
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
    /// The body without the extensions; `model` and `messages` still as the client sent them.
    body: Map<String, Value>,
}

impl ChatRequest {
    /// Validates a client body; `timeout` may be at most `max_timeout`. Errors are 400
    /// `invalid_request` with a message that says what to fix and, where there is one, the
    /// field in `param`.
    pub fn parse(raw: &[u8], max_timeout: Duration) -> Result<ChatRequest, Error> {
        if raw.iter().all(u8::is_ascii_whitespace) {
            return Err(Error::invalid(
                "request body is empty: send a JSON chat-completions body",
            ));
        }
        let text = std::str::from_utf8(raw).map_err(|e| {
            Error::invalid(format!(
                "request body is not valid UTF-8 (bad byte at offset {})",
                e.valid_up_to()
            ))
        })?;
        let value: Value = serde_json::from_str(text)
            .map_err(|e| Error::invalid(format!("request body is not valid JSON: {e}")))?;
        let Value::Object(mut body) = value else {
            return Err(Error::invalid("request body must be a JSON object"));
        };

        let model = match body.get("model") {
            Some(Value::String(m)) if !m.trim().is_empty() => m.trim().to_string(),
            Some(Value::String(_)) => {
                return Err(Error::invalid_param("model", "'model' is empty"));
            }
            Some(_) => return Err(Error::invalid_param("model", "'model' must be a string")),
            None => return Err(Error::invalid_param("model", "'model' is required")),
        };
        check_messages(body.get("messages"))?;

        let session_id = match body.remove("session_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id)) => {
                session::validate_id(&id)?;
                Some(id)
            }
            Some(_) => {
                return Err(Error::invalid_param(
                    "session_id",
                    "'session_id' must be a string",
                ));
            }
        };
        let timeout = match body.remove("timeout") {
            None | Some(Value::Null) => DEFAULT_TIMEOUT,
            Some(Value::Number(n)) => match n.as_f64() {
                Some(s) if s > 0.0 && s <= max_timeout.as_secs_f64() => Duration::from_secs_f64(s),
                _ => {
                    return Err(Error::invalid_param(
                        "timeout",
                        format!(
                            "'timeout' must be a number of seconds above 0 and at most {}",
                            max_timeout.as_secs()
                        ),
                    ));
                }
            },
            Some(_) => {
                return Err(Error::invalid_param(
                    "timeout",
                    "'timeout' must be a number of seconds",
                ));
            }
        };
        let retries = match body.remove("retries") {
            None | Some(Value::Null) => DEFAULT_RETRIES,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(r) if (1..=u64::from(MAX_RETRIES)).contains(&r) => r as u32,
                _ => {
                    return Err(Error::invalid_param(
                        "retries",
                        format!(
                            "'retries' must be a whole number of attempts from 1 to {MAX_RETRIES}"
                        ),
                    ));
                }
            },
            Some(_) => {
                return Err(Error::invalid_param(
                    "retries",
                    "'retries' must be a whole number",
                ));
            }
        };
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
        Ok(ChatRequest {
            model,
            session_id,
            timeout,
            retries,
            stream,
            client_wants_usage,
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

    /// The last `user` message, as it goes into the session.
    pub fn last_user_message(&self) -> Option<Message> {
        self.messages()
            .iter()
            .rev()
            .find(|m| m["role"] == "user")
            .map(|m| Message {
                role: "user".to_string(),
                content: m.get("content").cloned().unwrap_or(Value::Null),
            })
    }

    /// The body for the upstream: memory first, then `history`, then the client's messages;
    /// `model` set to the upstream id; clamps applied; extensions gone; for a stream,
    /// `stream_options.include_usage` switched on.
    pub fn upstream_body(
        &self,
        model: &Model,
        memory: &Memory,
        history: &[Message],
    ) -> Map<String, Value> {
        // Every field but `messages`, which is rebuilt below: cloning it too would copy the
        // client's messages (images included) once more for nothing.
        let mut body: Map<String, Value> = self
            .body
            .iter()
            .filter(|(k, _)| k.as_str() != "messages")
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        body.insert("model".to_string(), Value::String(model.id.clone()));

        let client_messages = self.messages();
        let mut messages = Vec::with_capacity(client_messages.len() + history.len() + 1);
        if !memory.content.is_empty() {
            let marks = count_cache_marks(client_messages)
                + body
                    .get("tools")
                    .map_or(0, |t| count_cache_marks(std::slice::from_ref(t)));
            let content = if memory.cache && model.is_claude() && marks < MAX_CACHE_MARKS {
                json!([{"type": "text", "text": memory.content, "cache_control": {"type": "ephemeral"}}])
            } else {
                Value::String(memory.content.clone())
            };
            messages.push(json!({"role": "system", "content": content}));
        }
        messages.extend(
            history
                .iter()
                .map(|m| json!({"role": m.role, "content": m.content})),
        );
        messages.extend(client_messages.iter().cloned());
        body.insert("messages".to_string(), Value::Array(messages));

        if let Some(t) = body.get("temperature").and_then(Value::as_f64) {
            // A range of 0..0 means "unknown": no clamp.
            if model.max_temp > 0.0 {
                let clamped = t.clamp(model.min_temp.min(model.max_temp), model.max_temp);
                if clamped != t {
                    body.insert("temperature".to_string(), json!(clamped));
                }
            }
        }
        clamp_tokens(&mut body, model);

        if self.stream {
            let opts = body.entry("stream_options").or_insert_with(|| json!({}));
            if !opts.is_object() {
                *opts = json!({});
            }
            if let Value::Object(o) = opts {
                o.insert("include_usage".to_string(), Value::Bool(true));
            }
        }
        body
    }
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

/// Counts `cache_control` keys anywhere in these values.
fn count_cache_marks(values: &[Value]) -> usize {
    fn walk(v: &Value) -> usize {
        match v {
            Value::Object(o) => {
                usize::from(o.contains_key("cache_control")) + o.values().map(walk).sum::<usize>()
            }
            Value::Array(a) => a.iter().map(walk).sum(),
            _ => 0,
        }
    }
    values.iter().map(walk).sum()
}

/// Clamps `max_tokens` / `max_completion_tokens` to the model's output limit and uses the
/// name the model wants. Absent stays absent.
fn clamp_tokens(body: &mut Map<String, Value>, model: &Model) {
    let limit = |n: u64| {
        if model.max_output > 0 {
            n.min(model.max_output)
        } else {
            n
        }
    };
    let max_tokens = body.get("max_tokens").and_then(Value::as_u64);
    let max_completion = body.get("max_completion_tokens").and_then(Value::as_u64);
    if model.completion_tokens {
        // Both given: the smaller wins; either way only the new name goes up.
        let wanted = match (max_tokens, max_completion) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if let Some(n) = wanted {
            body.remove("max_tokens");
            body.insert("max_completion_tokens".to_string(), json!(limit(n)));
        }
    } else {
        if let Some(n) = max_tokens {
            body.insert("max_tokens".to_string(), json!(limit(n)));
        }
        if let Some(n) = max_completion {
            body.insert("max_completion_tokens".to_string(), json!(limit(n)));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::catalog::Catalog;

    fn model(short: &str) -> Model {
        Catalog::embedded().get(short).unwrap().clone()
    }

    fn mem(content: &str, cache: bool) -> Memory {
        Memory {
            content: content.to_string(),
            cache,
        }
    }

    fn parse(v: Value) -> Result<ChatRequest, Error> {
        ChatRequest::parse(&serde_json::to_vec(&v).unwrap(), MAX_TIMEOUT)
    }

    fn hello(model: &str) -> Value {
        json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
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
    }

    #[test]
    fn extensions_never_reach_the_upstream() {
        let mut b = hello("gpt41");
        b["session_id"] = json!("s1");
        b["timeout"] = json!(30);
        b["retries"] = json!(2);
        let req = parse(b).unwrap();
        let up = req.upstream_body(&model("gpt41"), &Memory::default(), &[]);
        for k in ["session_id", "timeout", "retries"] {
            assert!(!up.contains_key(k), "{k} leaked");
        }
        assert_eq!(up["model"], "gpt-4.1");
    }

    #[test]
    fn messages_in_order_memory_history_client() {
        let req = parse(json!({"model": "gpt41", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
        ]}))
        .unwrap();
        let history = vec![
            Message {
                role: "user".into(),
                content: json!("earlier"),
            },
            Message {
                role: "assistant".into(),
                content: json!("answer"),
            },
        ];
        let up = req.upstream_body(&model("gpt41"), &mem("I am memory", true), &history);
        let msgs = up["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 5);
        assert_eq!(msgs[0], json!({"role": "system", "content": "I am memory"}));
        assert_eq!(msgs[1]["content"], "earlier");
        assert_eq!(msgs[2]["content"], "answer");
        assert_eq!(msgs[3], req.messages()[0]);
        assert_eq!(msgs[4], req.messages()[1], "content parts pass unchanged");
    }

    #[test]
    fn empty_memory_sends_nothing() {
        let up = parse(hello("claude-h")).unwrap().upstream_body(
            &model("claude-h"),
            &mem("", true),
            &[],
        );
        assert_eq!(up["messages"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn claude_gets_cache_control_when_cache_is_on() {
        let req = parse(hello("claude-h")).unwrap();
        let up = req.upstream_body(&model("claude-h"), &mem("facts", true), &[]);
        assert_eq!(
            up["messages"][0],
            json!({"role": "system", "content": [
                {"type": "text", "text": "facts", "cache_control": {"type": "ephemeral"}}]})
        );
        // Cache off, or not Claude: a plain string.
        let up = req.upstream_body(&model("claude-h"), &mem("facts", false), &[]);
        assert_eq!(up["messages"][0]["content"], "facts");
        let up =
            parse(hello("gpt41"))
                .unwrap()
                .upstream_body(&model("gpt41"), &mem("facts", true), &[]);
        assert_eq!(up["messages"][0]["content"], "facts");
    }

    #[test]
    fn no_fifth_cache_mark() {
        let part =
            |t: &str| json!({"type": "text", "text": t, "cache_control": {"type": "ephemeral"}});
        let three = json!({"model": "claude-h", "messages": [
            {"role": "system", "content": [part("a"), part("b")]},
            {"role": "user", "content": [part("c"), {"type": "text", "text": "q"}]}]});
        let up =
            parse(three.clone())
                .unwrap()
                .upstream_body(&model("claude-h"), &mem("m", true), &[]);
        assert!(
            up["messages"][0]["content"].is_array(),
            "3 marks + memory = 4: allowed"
        );

        let mut four = three;
        four["messages"][1]["content"][1] = part("d");
        let up =
            parse(four.clone())
                .unwrap()
                .upstream_body(&model("claude-h"), &mem("m", true), &[]);
        assert_eq!(
            up["messages"][0]["content"], "m",
            "client has 4 marks: memory goes without"
        );

        // Marks on tools count too.
        let mut tools = four;
        tools["messages"][1]["content"][1] = json!({"type": "text", "text": "q"});
        tools["tools"] = json!([{"type": "function", "function": {"name": "f"}, "cache_control": {"type": "ephemeral"}}]);
        let up = parse(tools)
            .unwrap()
            .upstream_body(&model("claude-h"), &mem("m", true), &[]);
        assert_eq!(up["messages"][0]["content"], "m");
    }

    #[test]
    fn temperature_is_clamped_into_the_models_range() {
        let t = |short: &str, temp: Value| {
            let mut b = hello(short);
            b["temperature"] = temp;
            parse(b)
                .unwrap()
                .upstream_body(&model(short), &Memory::default(), &[])["temperature"]
                .clone()
        };
        assert_eq!(t("claude-h", json!(1.7)), json!(1.0));
        assert_eq!(t("claude-h", json!(-0.5)), json!(0.0));
        assert_eq!(t("claude-h", json!(0.3)), json!(0.3));
        assert_eq!(t("gpt41", json!(1.7)), json!(1.7));
        assert_eq!(t("gpt41", json!(9)), json!(2.0));
        let up =
            parse(hello("gpt41"))
                .unwrap()
                .upstream_body(&model("gpt41"), &Memory::default(), &[]);
        assert!(!up.contains_key("temperature"), "absent stays absent");
    }

    #[test]
    fn max_tokens_rules() {
        let run = |short: &str, extra: Value| {
            let mut b = hello(short);
            for (k, v) in extra.as_object().unwrap() {
                b[k] = v.clone();
            }
            parse(b)
                .unwrap()
                .upstream_body(&model(short), &Memory::default(), &[])
        };
        let up = run("gpt41", json!({}));
        assert!(
            !up.contains_key("max_tokens") && !up.contains_key("max_completion_tokens"),
            "never 0"
        );
        assert_eq!(run("gpt41", json!({"max_tokens": 100}))["max_tokens"], 100);
        assert_eq!(
            run("gpt41", json!({"max_tokens": 99999}))["max_tokens"],
            8192
        );
        let up = run("gpt5m", json!({"max_tokens": 99999}));
        assert_eq!(up["max_completion_tokens"], 4096);
        assert!(!up.contains_key("max_tokens"));
        let up = run(
            "gpt5m",
            json!({"max_tokens": 500, "max_completion_tokens": 300}),
        );
        assert_eq!(up["max_completion_tokens"], 300);
        assert!(!up.contains_key("max_tokens"));
        assert_eq!(
            run("gpt41", json!({"max_completion_tokens": 10000}))["max_completion_tokens"],
            8192
        );
    }

    #[test]
    fn other_fields_pass_through_untouched() {
        let extra = json!({
            "tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}],
            "tool_choice": "auto", "response_format": {"type": "json_object"},
            "top_p": 0.5, "stop": ["\n"], "seed": 7, "user": "u1", "logprobs": true, "n": 1,
            "frequency_penalty": 0.1, "some_future_field": {"x": [1, 2]}
        });
        let mut b = hello("gpt41");
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        let up = parse(b)
            .unwrap()
            .upstream_body(&model("gpt41"), &Memory::default(), &[]);
        for (k, v) in extra.as_object().unwrap() {
            assert_eq!(&up[k], v, "{k}");
        }
    }

    #[test]
    fn tool_call_messages_pass_through() {
        let msgs = json!([
            {"role": "user", "content": "sum?"},
            {"role": "assistant", "content": null, "tool_calls": [{"id": "call_1", "type": "function",
                "function": {"name": "f", "arguments": "{\"x\":1}"}}]},
            {"role": "tool", "tool_call_id": "call_1", "content": "42"}
        ]);
        let req = parse(json!({"model": "gpt41", "messages": msgs})).unwrap();
        let up = req.upstream_body(&model("gpt41"), &Memory::default(), &[]);
        assert_eq!(up["messages"], msgs);
    }

    #[test]
    fn stream_asks_for_usage_and_remembers_whether_the_client_did() {
        let mut b = hello("gpt41");
        b["stream"] = json!(true);
        let req = parse(b.clone()).unwrap();
        assert!(req.stream && !req.client_wants_usage);
        let up = req.upstream_body(&model("gpt41"), &Memory::default(), &[]);
        assert_eq!(up["stream_options"], json!({"include_usage": true}));
        b["stream_options"] = json!({"include_usage": true, "other": 1});
        let req = parse(b).unwrap();
        assert!(req.client_wants_usage);
        let up = req.upstream_body(&model("gpt41"), &Memory::default(), &[]);
        assert_eq!(
            up["stream_options"],
            json!({"include_usage": true, "other": 1})
        );
        let up =
            parse(hello("gpt41"))
                .unwrap()
                .upstream_body(&model("gpt41"), &Memory::default(), &[]);
        assert!(!up.contains_key("stream_options"));
    }

    #[test]
    fn last_user_message_for_the_session() {
        let req = parse(json!({"model": "m", "messages": [
            {"role": "user", "content": "first"}, {"role": "assistant", "content": "a"},
            {"role": "user", "content": [{"type": "text", "text": "second"}]},
            {"role": "tool", "tool_call_id": "x", "content": "t"}]}))
        .unwrap();
        let m = req.last_user_message().unwrap();
        assert_eq!(m.content, json!([{"type": "text", "text": "second"}]));
        let none =
            parse(json!({"model": "m", "messages": [{"role": "system", "content": "s"}]})).unwrap();
        assert!(none.last_user_message().is_none());
    }
}
