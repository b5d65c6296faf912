//! A chat request made ready for one model, the same way for the server and `sigoe`: the
//! body sent upstream (memory first, then the session history, then the request's messages,
//! with the clamps of [`ChatRequest::upstream_body`]), and the session turn kept after a
//! success.

use super::answer::content_text;
use super::request::ChatRequest;
use crate::error::Error;
use crate::state::catalog::Model;
use crate::state::memory::Memory;
use crate::state::session::{Message, SessionStore};

/// A request made ready for one model: the upstream body, and what the session needs once
/// the answer is in.
#[derive(Debug)]
pub struct Prepared {
    /// The short code the session file is named after.
    pub short: String,
    /// The client key whose session it is (with `keys.csv`): each key has its own.
    owner: Option<String>,
    /// The body for the upstream, serialized.
    pub body: Vec<u8>,
    /// The session id and the client's side of the turn (see
    /// [`ChatRequest::turn_input`]), when a session is kept.
    session: Option<(String, Vec<Message>)>,
}

impl Prepared {
    /// Reads the session history (when the request names a session) and builds the upstream
    /// body for `model`, whose short code names the session file.
    pub fn new(
        req: &ChatRequest,
        model: &Model,
        memory: &Memory,
        sessions: &SessionStore,
    ) -> Result<Prepared, Error> {
        let history = history(req, None, &model.short, sessions)?;
        Prepared::with_history(req, model, memory, &history, &model.short, None)
    }

    /// Builds the upstream body for `model` from a history already read, for the session of
    /// `session_model` (a fallback model answers into the session of the model asked for)
    /// of the client key `owner`. The body is logged at DEBUG only: it holds the user's
    /// messages.
    pub fn with_history(
        req: &ChatRequest,
        model: &Model,
        memory: &Memory,
        history: &[Message],
        session_model: &str,
        owner: Option<&str>,
    ) -> Result<Prepared, Error> {
        let body = req.upstream_bytes(model, memory, history);
        if log::log_enabled!(log::Level::Debug) {
            log::debug!(model = model.short.as_str(), body = String::from_utf8_lossy(&body).as_ref(); "upstream request");
        }
        Ok(Prepared {
            short: session_model.to_string(),
            owner: owner.map(str::to_string),
            body,
            session: req
                .session_id
                .clone()
                .map(|id| (id, req.turn_input(history))),
        })
    }

    /// Whether a session turn is kept (and so the answer's text must be gathered).
    pub fn keeps_session(&self) -> bool {
        self.session.is_some()
    }

    /// Appends the user's message and `assistant` to the session, if there is one. A failure
    /// to write is logged, not returned: the answer is there all the same, and the old
    /// session file is intact (writes are atomic).
    pub fn save_turn(&self, sessions: &SessionStore, assistant: Message) {
        if let Some(turn) = self.turn(assistant) {
            turn.save(sessions);
        }
    }

    /// The session turn an answer makes (`None` without a session), to save apart. An
    /// answer with nothing in it — no text but blanks, no tool calls: a refusal, a filtered
    /// answer — makes none, the question included: kept, it would go upstream with every
    /// later turn as an empty assistant message, which Anthropic refuses (and the client
    /// asks again anyway).
    pub fn turn(&self, assistant: Message) -> Option<Turn> {
        let (id, user) = self.session.as_ref()?;
        let calls = assistant
            .tool_calls
            .as_ref()
            .and_then(serde_json::Value::as_array)
            .is_some_and(|c| !c.is_empty());
        if !calls && content_text(&assistant.content).trim().is_empty() {
            log::info!(model = self.short.as_str(), session = id.as_str(); "empty answer: no session turn kept");
            return None;
        }
        Some(Turn {
            owner: self.owner.clone(),
            short: self.short.clone(),
            id: id.clone(),
            messages: user.iter().cloned().chain(Some(assistant)).collect(),
        })
    }
}

/// One turn of a session (the user's message and the answer), to append to its file.
#[derive(Debug)]
pub struct Turn {
    owner: Option<String>,
    short: String,
    id: String,
    messages: Vec<Message>,
}

impl Turn {
    /// Appends it; a failure is logged (see [`Prepared::save_turn`]).
    pub fn save(self, sessions: &SessionStore) {
        if let Err(e) =
            sessions.append(self.owner.as_deref(), &self.short, &self.id, &self.messages)
        {
            log::error!(model = self.short.as_str(), session = self.id.as_str(), error = e.to_string().as_str(); "session not saved");
        }
    }
}

/// The history of the request's session with `session_model`, of the client key `owner`
/// (empty without a session).
pub fn history(
    req: &ChatRequest,
    owner: Option<&str>,
    session_model: &str,
    sessions: &SessionStore,
) -> Result<Vec<Message>, Error> {
    match &req.session_id {
        Some(id) => sessions.history(owner, session_model, id),
        None => Ok(Vec::new()),
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::chat::answer::assistant_message;
    use crate::chat::request::MAX_TIMEOUT;
    use crate::state::catalog::Catalog;
    use crate::util::fs::testdir::TestDir;
    use serde_json::{Value, json};

    #[test]
    fn prepared_requests_read_and_keep_the_session() {
        let dir = TestDir::new("completion-prepared");
        let sessions = SessionStore::new(dir.path());
        let model = Catalog::embedded().get("claude-h").unwrap().clone();
        let memory = Memory {
            content: "mem".into(),
            cache: false,
        };
        let body = json!({"model": "claude-h", "session_id": "s1", "max_tokens": 99999,
            "messages": [{"role": "user", "content": "q1"}]});
        let req = ChatRequest::parse(body.to_string().as_bytes(), MAX_TIMEOUT).unwrap();

        let first = Prepared::new(&req, &model, &memory, &sessions).unwrap();
        let sent: Value = serde_json::from_slice(&first.body).unwrap();
        assert_eq!(sent["model"], "claude-3-5-haiku-20241022");
        assert_eq!(sent["max_tokens"], 8192);
        assert_eq!(sent["messages"].as_array().unwrap().len(), 2);
        assert!(sent.get("session_id").is_none());
        first.save_turn(&sessions, assistant_message(json!("a1")));

        let again = Prepared::new(&req, &model, &memory, &sessions).unwrap();
        let sent: Value = serde_json::from_slice(&again.body).unwrap();
        let roles: Vec<&str> = sent["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["role"].as_str().unwrap())
            .collect();
        assert_eq!(roles, ["system", "user", "assistant", "user"]);
        assert_eq!(sent["messages"][2]["content"], "a1");

        // Without a session nothing is read or written.
        let plain = ChatRequest::parse(
            br#"{"model":"x","messages":[{"role":"user","content":"q"}]}"#,
            MAX_TIMEOUT,
        )
        .unwrap();
        let p = Prepared::new(&plain, &model, &Memory::default(), &sessions).unwrap();
        p.save_turn(&sessions, assistant_message(json!("ignored")));
        assert_eq!(sessions.history(None, "claude-h", "s1").unwrap().len(), 2);
    }

    #[test]
    fn an_empty_answer_keeps_no_turn() {
        let dir = TestDir::new("completion-empty-turn");
        let sessions = SessionStore::new(dir.path());
        let model = Catalog::embedded().get("claude-h").unwrap().clone();
        let body = json!({"model": "claude-h", "session_id": "s1",
            "messages": [{"role": "user", "content": "q"}]});
        let req = ChatRequest::parse(body.to_string().as_bytes(), MAX_TIMEOUT).unwrap();
        let p = Prepared::new(&req, &model, &Memory::default(), &sessions).unwrap();
        for empty in [
            json!(""),
            json!(null),
            json!(" \n"),
            json!([]),
            json!([{"type": "text", "text": ""}]),
        ] {
            p.save_turn(&sessions, assistant_message(empty.clone()));
            assert_eq!(
                sessions.history(None, "claude-h", "s1").unwrap(),
                [],
                "{empty}"
            );
        }
        // Tool calls without text are a turn.
        let calls = crate::chat::answer::assistant_with_calls(String::new(), [("c1", "f", "{}")]);
        p.save_turn(&sessions, calls);
        assert_eq!(sessions.history(None, "claude-h", "s1").unwrap().len(), 2);
        p.save_turn(&sessions, assistant_message(json!("a")));
        assert_eq!(sessions.history(None, "claude-h", "s1").unwrap().len(), 4);
    }
}
