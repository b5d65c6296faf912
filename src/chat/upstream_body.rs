//! The body sent upstream for a chat request: memory first, then the session history, then
//! the client's messages, unchanged; `model` set to the upstream id, `temperature` clamped
//! into the model's range, `max_tokens` clamped to its output limit (and renamed
//! `max_completion_tokens` for models that want that), `stream_options.include_usage` on for
//! a stream. Written straight from the parsed request, the changed fields put in on the way.

use serde::ser::{Serialize, SerializeMap, SerializeSeq, Serializer};
use serde_json::{Map, Value, json};

use super::answer::{content_text, turn_text};
use super::request::{ChatRequest, MAX_CACHE_MARKS};
use crate::state::catalog::{Model, Provider};
use crate::state::memory::Memory;
use crate::state::session::{Message, call_ids};

impl ChatRequest {
    /// The body for the upstream, serialized: memory first, then `history`, then the
    /// client's messages; `model` set to the upstream id; clamps applied; extensions gone;
    /// for a stream, `stream_options.include_usage` switched on. Written straight from the
    /// client's parsed body, with the changed fields put in on the way: nothing is cloned
    /// (a request is parsed once and serialized once, whatever its size).
    pub fn upstream_bytes(&self, model: &Model, memory: &Memory, history: &[Message]) -> Vec<u8> {
        let client_messages = self.messages();
        let memory = (!memory.content.is_empty()).then(|| {
            let marks = count_cache_marks(client_messages) + count_tool_marks(self.tools());
            let content = if memory.cache && model.is_claude() && marks < MAX_CACHE_MARKS {
                json!([{"type": "text", "text": memory.content, "cache_control": {"type": "ephemeral"}}])
            } else {
                Value::String(memory.content.clone())
            };
            json!({"role": "system", "content": content})
        });
        let (set, dropped) = self.changes(model);
        let unmark = self.cache_marks && !model.is_claude();
        let body = Upstream {
            body: &self.body,
            messages: Messages {
                memory,
                history,
                client: client_messages,
                unmark,
                with_tools: self
                    .tools()
                    .and_then(Value::as_array)
                    .is_some_and(|t| !t.is_empty()),
            },
            unmark,
            set,
            dropped,
        };
        // Room for the client's body (the most of it) and the memory block, in one go.
        let room = self.raw_len + memory_len(&body.messages) + 64;
        let mut out = Vec::with_capacity(room);
        // Serializing maps of `Value`s and plain data into a Vec cannot fail.
        let _ = serde_json::to_writer(&mut out, &body);
        out
    }

    /// The fields whose value changes upstream (put in, in place of the client's), and the
    /// fields that are left out.
    fn changes<'m>(&self, model: &'m Model) -> (Changes<'m>, Vec<&'static str>) {
        let body = &self.body;
        let mut set = Changes::default();
        set.put("model", Set::Text(&model.id));
        if let Some(t) = body.get("temperature").and_then(Value::as_f64) {
            // A range of 0..0 means "unknown": no clamp.
            if model.max_temp > 0.0 {
                let clamped = t.clamp(model.min_temp.min(model.max_temp), model.max_temp);
                if clamped != t {
                    set.put("temperature", Set::Value(json!(clamped)));
                }
            }
        }
        let dropped = clamp_tokens(body, model, &mut set);
        // Z.ai thinks by default (GLM-4.7 on); a Messages client that did not enable
        // thinking would pay for reasoning it never sees.
        if let Some(on) = self.thinking
            && model.provider == Provider::Zai
        {
            let kind = if on { "enabled" } else { "disabled" };
            set.put("thinking", Set::Value(json!({"type": kind})));
        }
        if self.stream {
            let mut opts = match body.get("stream_options") {
                Some(Value::Object(o)) => o.clone(),
                _ => Map::new(),
            };
            opts.insert("include_usage".to_string(), Value::Bool(true));
            set.put("stream_options", Set::Value(Value::Object(opts)));
        }
        (set, dropped)
    }

    /// The upstream body as a map (tests read it so).
    #[cfg(test)]
    pub fn upstream_body(
        &self,
        model: &Model,
        memory: &Memory,
        history: &[Message],
    ) -> Map<String, Value> {
        serde_json::from_slice(&self.upstream_bytes(model, memory, history)).unwrap_or_default()
    }
}

/// Counts the tools that carry a `cache_control` mark (beside `function`, where a Claude
/// upstream reads it; a tool parameter that happens to be called so is no mark).
fn count_tool_marks(tools: Option<&Value>) -> usize {
    tools.and_then(Value::as_array).map_or(0, |list| {
        list.iter()
            .filter(|t| t.get("cache_control").is_some())
            .count()
    })
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
/// name the model wants, into `set`; returns the names left out. Absent stays absent.
fn clamp_tokens(
    body: &Map<String, Value>,
    model: &Model,
    set: &mut Changes<'_>,
) -> Vec<&'static str> {
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
            set.put("max_completion_tokens", Set::Value(json!(limit(n))));
            return vec!["max_tokens"];
        }
    } else {
        if let Some(n) = max_tokens {
            set.put("max_tokens", Set::Value(json!(limit(n))));
        }
        if let Some(n) = max_completion {
            set.put("max_completion_tokens", Set::Value(json!(limit(n))));
        }
    }
    Vec::new()
}

/// A field's new value: the model's own text (no copy), or a value made for it.
enum Set<'m> {
    Text(&'m str),
    Value(Value),
}

impl Serialize for Set<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Set::Text(t) => s.serialize_str(t),
            Set::Value(v) => v.serialize(s),
        }
    }
}

/// The fields a request changes upstream, in the order they were put (a handful: a list).
#[derive(Default)]
struct Changes<'m>(Vec<(&'static str, Set<'m>)>);

impl<'m> Changes<'m> {
    /// Sets `name` (replacing an earlier value).
    fn put(&mut self, name: &'static str, value: Set<'m>) {
        match self.0.iter_mut().find(|(n, _)| *n == name) {
            Some(slot) => slot.1 = value,
            None => self.0.push((name, value)),
        }
    }

    fn get(&self, name: &str) -> Option<&Set<'m>> {
        self.0.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }
}

/// The upstream body as it is written: the client's fields in their order, `messages`
/// assembled, the changed fields in place of the client's.
struct Upstream<'a, 'm> {
    body: &'a Map<String, Value>,
    messages: Messages<'a>,
    set: Changes<'m>,
    dropped: Vec<&'static str>,
    /// Leave the marks the gateway kept on `tools` out (see `ChatRequest::cache_marks`).
    unmark: bool,
}

impl Serialize for Upstream<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.body {
            if k == "messages" {
                map.serialize_entry(k, &self.messages)?;
            } else if k == "tools" && self.unmark {
                map.serialize_entry(k, &UnmarkedTools(v))?;
            } else if let Some(new) = self.set.get(k) {
                map.serialize_entry(k, new)?;
            } else if !self.dropped.contains(&k.as_str()) {
                map.serialize_entry(k, v)?;
            }
        }
        for (k, v) in self
            .set
            .0
            .iter()
            .filter(|(k, _)| !self.body.contains_key(*k))
        {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// Bytes the memory block and the history add, about (a first size for the buffer: it
/// still grows as needed).
fn memory_len(m: &Messages<'_>) -> usize {
    let memory = m
        .memory
        .as_ref()
        .map_or(0, |v| v["content"].as_str().map_or(256, str::len) + 64);
    memory + 256 * m.history.len()
}

/// The memory block, the session history, then the client's messages, as one array.
struct Messages<'a> {
    memory: Option<Value>,
    history: &'a [Message],
    client: &'a [Value],
    /// Leave the client's `cache_control` marks out (see `ChatRequest::cache_marks`).
    unmark: bool,
    /// The request has `tools`: the history's tool calls may go as calls.
    with_tools: bool,
}

impl Serialize for Messages<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(None)?;
        if let Some(m) = &self.memory {
            seq.serialize_element(m)?;
        }
        // The client's leading system (or developer) messages — the system prompt a client
        // sends with every request, and the Anthropic `system` and Responses `instructions`
        // translated — come before the session's history, not in the middle of the
        // conversation.
        let lead = self
            .client
            .iter()
            .take_while(|m| matches!(m["role"].as_str(), Some("system" | "developer")))
            .count();
        let (lead, rest) = self.client.split_at(lead);
        let client =
            |seq: &mut S::SerializeSeq, m: &Value| seq.serialize_element(&Client(m, self.unmark));
        for m in lead {
            client(&mut seq, m)?;
        }
        for (m, form) in self
            .history
            .iter()
            .zip(forms(self.history, rest, self.with_tools))
        {
            if form != Form::Skip {
                seq.serialize_element(&HistoryEntry(m, form))?;
            }
        }
        for m in rest {
            client(&mut seq, m)?;
        }
        seq.end()
    }
}

/// A client's message as it goes upstream (no copy is made): without its `cache_control`
/// marks when `.1`, and a `developer` message as `system`. OpenAI's reasoning models read a
/// `system` message as a `developer` one, but other providers, and the chat templates of
/// local models, may not know `developer` (the Responses API sends it as `system` too).
struct Client<'a>(&'a Value, bool);

impl Serialize for Client<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Client(m, unmark) = *self;
        match m {
            Value::Object(o) if o.get("role").and_then(Value::as_str) == Some("developer") => {
                let mut map = s.serialize_map(None)?;
                for (k, v) in o.iter().filter(|(k, _)| !(unmark && *k == "cache_control")) {
                    match k.as_str() {
                        "role" => map.serialize_entry(k, "system")?,
                        _ if unmark => map.serialize_entry(k, &Unmarked(v))?,
                        _ => map.serialize_entry(k, v)?,
                    }
                }
                map.end()
            }
            m if unmark => Unmarked(m).serialize(s),
            m => m.serialize(s),
        }
    }
}

/// A value written without its `cache_control` keys, at any depth (no copy is made).
struct Unmarked<'a>(&'a Value);

impl Serialize for Unmarked<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Value::Object(o) => {
                let mut map = s.serialize_map(None)?;
                for (k, v) in o.iter().filter(|(k, _)| *k != "cache_control") {
                    map.serialize_entry(k, &Unmarked(v))?;
                }
                map.end()
            }
            Value::Array(a) => {
                let mut seq = s.serialize_seq(Some(a.len()))?;
                for v in a {
                    seq.serialize_element(&Unmarked(v))?;
                }
                seq.end()
            }
            other => other.serialize(s),
        }
    }
}

/// A `tools` list written without the `cache_control` key of each tool. Only that key: a
/// deeper one would be a parameter of the tool's schema, not a mark.
struct UnmarkedTools<'a>(&'a Value);

impl Serialize for UnmarkedTools<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let Value::Array(list) = self.0 else {
            return self.0.serialize(s);
        };
        let mut seq = s.serialize_seq(Some(list.len()))?;
        for tool in list {
            match tool {
                Value::Object(o) => seq.serialize_element(&UnmarkedTool(o))?,
                other => seq.serialize_element(other)?,
            }
        }
        seq.end()
    }
}

/// One tool without its own `cache_control` key, the rest as it was (no copy is made).
struct UnmarkedTool<'a>(&'a Map<String, Value>);

impl Serialize for UnmarkedTool<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.0.iter().filter(|(k, _)| *k != "cache_control") {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// How a session message goes upstream.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Form {
    /// `{"role", "content"}`.
    Plain,
    /// With its `tool_calls` (an assistant turn) or its `tool_call_id` (a tool result).
    Calls,
    /// As text: an assistant turn's calls as lines `[tool call NAME(ARGUMENTS)]` after its
    /// text; a tool result as a user message `[tool result ID] CONTENT`.
    Text,
    /// Left out: the client sent the same assistant turn again.
    Skip,
}

/// How each message of `history` goes upstream, before the client's messages `rest`
/// (system prompt excluded). An assistant turn with tool calls and the tool results after
/// it go as calls only when the request has tools (Anthropic refuses calls without them)
/// and every call is answered by the tool results that follow (OpenAI refuses a call
/// without its result, and a result without its call); otherwise as text, so a session
/// whose tool loop was left half-way (or trimmed) never makes a request the provider
/// refuses. An assistant turn the client sends again (same call ids, first of its
/// messages) is left out of the history: the client's copy goes.
fn forms(history: &[Message], rest: &[Value], with_tools: bool) -> Vec<Form> {
    let mut forms = vec![Form::Plain; history.len()];
    let mut end = history.len();
    if let (Some(last), Some(first)) = (history.last(), rest.first()) {
        let ids = last.call_ids();
        if first["role"] == "assistant"
            && !ids.is_empty()
            && call_ids(first.get("tool_calls")) == ids
        {
            forms[end - 1] = Form::Skip;
            end -= 1;
        }
    }
    // What follows each message: the rest of the history, then the client's messages.
    let role_at = |i: usize| match history[..end].get(i) {
        Some(m) => Some((m.role.as_str(), m.tool_call_id.as_deref())),
        None => rest
            .get(i - end)
            .map(|m| (m["role"].as_str().unwrap_or(""), m["tool_call_id"].as_str())),
    };
    let mut i = 0;
    while i < end {
        let m = &history[i];
        let ids = m.call_ids();
        let calls = m.tool_calls.as_ref().and_then(Value::as_array);
        if m.role == "assistant" && calls.is_some_and(|c| !c.is_empty()) {
            // The tool results right after it.
            let mut answered = Vec::new();
            let mut j = i + 1;
            while let Some(("tool", id)) = role_at(j) {
                answered.push(id.unwrap_or(""));
                j += 1;
            }
            let whole = with_tools
                && calls.is_some_and(|c| c.len() == ids.len())
                && ids.iter().all(|id| answered.contains(id));
            forms[i] = if whole { Form::Calls } else { Form::Text };
            for form in forms.iter_mut().take(j.min(end)).skip(i + 1) {
                *form = if whole { Form::Calls } else { Form::Text };
            }
            i = j.max(i + 1);
        } else {
            if m.role == "tool" {
                forms[i] = Form::Text;
            }
            i += 1;
        }
    }
    forms
}

/// A session message as it goes upstream (see [`Form`]), without the `cache_control` marks
/// its turn had: a mark is for the request it came with (it caches the prefix up to it,
/// history included), and kept marks would pile up, turn after turn, past the 4 Claude
/// allows (and reach other providers after a fallback).
struct HistoryEntry<'a>(&'a Message, Form);

impl Serialize for HistoryEntry<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let HistoryEntry(m, form) = *self;
        let mut map = s.serialize_map(None)?;
        match (form, m.role.as_str()) {
            (Form::Calls, "assistant") => {
                map.serialize_entry("role", "assistant")?;
                // No text: `null`, not "" (an empty text block is refused by Claude).
                let empty = m.content.as_str().is_some_and(str::is_empty);
                if empty {
                    map.serialize_entry("content", &Value::Null)?;
                } else {
                    map.serialize_entry("content", &Unmarked(&m.content))?;
                }
                map.serialize_entry("tool_calls", &m.tool_calls)?;
            }
            (Form::Calls, "tool") => {
                map.serialize_entry("role", "tool")?;
                map.serialize_entry("tool_call_id", &m.tool_call_id)?;
                map.serialize_entry("content", &Unmarked(&m.content))?;
            }
            (Form::Text, "tool") => {
                map.serialize_entry("role", "user")?;
                let id = m.tool_call_id.as_deref().unwrap_or("");
                let text = format!("[tool result {id}] {}", content_text(&m.content));
                map.serialize_entry("content", &text)?;
            }
            (Form::Text, _) => {
                map.serialize_entry("role", &m.role)?;
                let calls = m.tool_calls.as_ref().and_then(Value::as_array);
                let text = turn_text(
                    content_text(&m.content),
                    calls.into_iter().flatten().map(|c| {
                        (
                            c["function"]["name"].as_str().unwrap_or(""),
                            c["function"]["arguments"].as_str().unwrap_or(""),
                        )
                    }),
                );
                map.serialize_entry("content", &text)?;
            }
            _ => {
                map.serialize_entry("role", &m.role)?;
                map.serialize_entry("content", &Unmarked(&m.content))?;
            }
        }
        map.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
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
        ChatRequest::parse(
            &serde_json::to_vec(&v).unwrap(),
            crate::chat::request::MAX_TIMEOUT,
        )
    }

    fn hello(model: &str) -> Value {
        json!({"model": model, "messages": [{"role": "user", "content": "hello"}]})
    }

    #[test]
    fn developer_messages_go_as_system_messages_marks_kept_or_not() {
        let mark = json!({"type": "ephemeral"});
        let body = json!({"model": "claude-h", "messages": [
            {"role": "developer", "content": [{"type": "text", "text": "Be brief.", "cache_control": mark}]},
            {"role": "user", "content": "hi"},
            {"role": "developer", "content": "Now in French.", "name": "ops"}]});
        let mut req = parse(body).unwrap();
        // Marks a translated request (Anthropic's) carried are left out for other models.
        for (translated, marked) in [(false, true), (true, false)] {
            req.cache_marks = translated;
            let up = req.upstream_body(&model("gpt41"), &mem("", false), &[]);
            let part = json!({"type": "text", "text": "Be brief."});
            let part = if marked {
                json!({"type": "text", "text": "Be brief.", "cache_control": mark})
            } else {
                part
            };
            assert_eq!(
                up["messages"],
                json!([{"role": "system", "content": [part]}, {"role": "user", "content": "hi"},
                    {"role": "system", "content": "Now in French.", "name": "ops"}]),
                "translated: {translated}"
            );
        }
    }

    #[test]
    fn extensions_never_reach_the_upstream() {
        let mut b = hello("gpt41");
        b["session_id"] = json!("s1");
        b["timeout"] = json!(30);
        b["retries"] = json!(2);
        b["fallbacks"] = json!(["kimi", " zai-glm46 "]);
        let req = parse(b).unwrap();
        assert_eq!(
            req.fallbacks.as_deref(),
            Some(&["kimi".to_string(), "zai-glm46".to_string()][..])
        );
        let up = req.upstream_body(&model("gpt41"), &Memory::default(), &[]);
        for k in ["session_id", "timeout", "retries", "fallbacks"] {
            assert!(!up.contains_key(k), "{k} leaked");
        }
        assert_eq!(up["model"], "gpt-4.1");
    }

    #[test]
    fn a_sessions_tool_calls_go_as_calls_only_when_whole_and_with_tools() {
        let call = |id: &str| json!({"id": id, "type": "function", "function": {"name": "f", "arguments": "{}"}});
        let calls_turn = |ids: &[&str]| Message {
            tool_calls: Some(Value::Array(ids.iter().map(|id| call(id)).collect())),
            ..Message::new("assistant", json!(""))
        };
        let result = |id: &str| Message {
            tool_call_id: Some(id.to_string()),
            ..Message::new("tool", json!("18 C"))
        };
        let up = |history: &[Message], tools: bool, client: Value| -> Vec<Value> {
            let mut body = json!({"model": "gpt41", "messages": client});
            if tools {
                body["tools"] = json!([{"type": "function", "function": {"name": "f"}}]);
            }
            let req = parse(body).unwrap();
            let up = req.upstream_body(&model("gpt41"), &mem("", false), history);
            up["messages"].as_array().unwrap().clone()
        };
        let question = Message::new("user", json!("weather?"));
        let whole = [question.clone(), calls_turn(&["c1"]), result("c1")];
        let next = json!([{"role": "user", "content": "thanks"}]);
        // Whole, with tools: as calls (no text: null content).
        let msgs = up(&whole, true, next.clone());
        assert_eq!(
            msgs[1],
            json!({"role": "assistant", "content": null, "tool_calls": [call("c1")]})
        );
        assert_eq!(
            msgs[2],
            json!({"role": "tool", "tool_call_id": "c1", "content": "18 C"})
        );
        // Without tools: as text.
        let msgs = up(&whole, false, next.clone());
        assert_eq!(
            msgs[1],
            json!({"role": "assistant", "content": "[tool call f({})]"})
        );
        assert_eq!(
            msgs[2],
            json!({"role": "user", "content": "[tool result c1] 18 C"})
        );
        // A call left unanswered (the user moved on), or answered only in part: as text.
        let msgs = up(&whole[..2], true, next.clone());
        assert_eq!(msgs[1]["content"], "[tool call f({})]");
        let part = [question.clone(), calls_turn(&["c1", "c2"]), result("c1")];
        let msgs = up(&part, true, next.clone());
        assert_eq!(
            (msgs[1]["role"].clone(), msgs[2]["role"].clone()),
            (json!("assistant"), json!("user"))
        );
        assert!(msgs[1].get("tool_calls").is_none());
        // A result whose call was trimmed away: as text.
        let msgs = up(&[result("c0"), question.clone()], true, next.clone());
        assert_eq!(msgs[0]["role"], "user");
        // The results in the client's messages complete a call the session ends with.
        let msgs = up(
            &whole[..2],
            true,
            json!([{"role": "tool", "tool_call_id": "c1", "content": "18 C"}]),
        );
        assert_eq!(msgs[1]["tool_calls"], json!([call("c1")]));
        // The client sends the call again: its copy goes, the session's does not.
        let msgs = up(
            &whole[..2],
            true,
            json!([{"role": "assistant", "content": "x", "tool_calls": [call("c1")]},
                {"role": "tool", "tool_call_id": "c1", "content": "18 C"}]),
        );
        assert_eq!(msgs.len(), 3);
        assert_eq!(msgs[1]["content"], "x");
    }

    #[test]
    fn a_sessions_cache_marks_stay_with_the_turn_they_came_with() {
        let marked =
            json!([{"type": "text", "text": "earlier", "cache_control": {"type": "ephemeral"}}]);
        let history: Vec<Message> = (0..4)
            .flat_map(|_| {
                [
                    Message::new("user", marked.clone()),
                    Message::new("assistant", json!("answer")),
                ]
            })
            .collect();
        let req =
            parse(json!({"model": "claude-h", "messages": [{"role": "user", "content": marked}]}))
                .unwrap();
        let up = req.upstream_bytes(&model("claude-h"), &mem("I am memory", true), &history);
        let text = String::from_utf8(up).unwrap();
        // The memory's mark and the client's own: 2, whatever the history held.
        assert_eq!(text.matches("cache_control").count(), 2, "{text}");
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            body["messages"][1]["content"],
            json!([{"type": "text", "text": "earlier"}])
        );
    }

    #[test]
    fn messages_in_order_memory_system_history_client() {
        let req = parse(json!({"model": "gpt41", "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": [{"type": "text", "text": "what?"},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}
        ]}))
        .unwrap();
        let history = vec![
            Message::new("user", json!("earlier")),
            Message::new("assistant", json!("answer")),
        ];
        let up = req.upstream_body(&model("gpt41"), &mem("I am memory", true), &history);
        let msgs = up["messages"].as_array().unwrap();
        assert_eq!(msgs.len(), 5);
        assert_eq!(msgs[0], json!({"role": "system", "content": "I am memory"}));
        assert_eq!(
            msgs[1],
            req.messages()[0],
            "the client's system prompt before the history"
        );
        assert_eq!(msgs[2]["content"], "earlier");
        assert_eq!(msgs[3]["content"], "answer");
        assert_eq!(msgs[4], req.messages()[1], "content parts pass unchanged");
        // A system message after the conversation began stays where the client put it.
        let later = parse(json!({"model": "gpt41", "messages": [
            {"role": "user", "content": "a"}, {"role": "system", "content": "now terse"}]}))
        .unwrap();
        let up = later.upstream_body(&model("gpt41"), &mem("", false), &history);
        let roles: Vec<&str> = up["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap_or(""))
            .collect();
        assert_eq!(roles, ["user", "assistant", "user", "system"]);
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
    fn marks_the_gateway_kept_reach_only_a_claude() {
        let marked = json!({"model": "claude-h", "messages": [
            {"role": "system", "content": [
                {"type": "text", "text": "rules", "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": [
                {"type": "text", "text": "q", "cache_control": {"type": "ephemeral", "ttl": "1h"}},
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]});
        let mut req = parse(marked.clone()).unwrap();
        req.cache_marks = true;
        let claude = req.upstream_body(&model("claude-h"), &Memory::default(), &[]);
        assert_eq!(claude["messages"], marked["messages"], "kept for Claude");
        let other = req.upstream_body(&model("gpt41"), &Memory::default(), &[]);
        assert_eq!(
            other["messages"],
            json!([
                {"role": "system", "content": [{"type": "text", "text": "rules"}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "q"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}]}]),
            "left out for a fallback to another provider, the rest as it was"
        );
        // A tool's mark is left out too; a parameter of its schema that is called so stays.
        let schema = json!({"type": "object", "properties": {"cache_control": {"type": "string"}}});
        let mut with_tools = marked.clone();
        with_tools["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": schema},
            "cache_control": {"type": "ephemeral"}}]);
        let mut req = parse(with_tools.clone()).unwrap();
        req.cache_marks = true;
        let claude = req.upstream_body(&model("claude-h"), &Memory::default(), &[]);
        assert_eq!(claude["tools"], with_tools["tools"]);
        let other = req.upstream_body(&model("gpt41"), &Memory::default(), &[]);
        assert_eq!(
            other["tools"],
            json!([{"type": "function", "function": {"name": "f", "parameters": schema}}])
        );
        // Marks a chat client wrote itself are its own business: passed on as sent.
        let own = parse(marked.clone()).unwrap();
        let up = own.upstream_body(&model("gpt41"), &Memory::default(), &[]);
        assert_eq!(up["messages"], marked["messages"]);
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
}
