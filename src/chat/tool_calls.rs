//! Tool calls assembled from a stream's pieces, for the translators that turn an OpenAI
//! stream into another API's events (Anthropic Messages, Responses), where each call is a
//! block or item of its own that starts with the call's id and name.
//!
//! The first piece of a call usually carries its id and name, the next ones fragments of its
//! arguments; a call is started once its name has come (its argument pieces wait until
//! then). Providers send calls one after another: a piece for a call that already gave way
//! to another one (interleaved calls) can no longer be sent, and is dropped.

use super::stream::ToolCallDelta;

/// A call to start: close whatever is open, open the call's block, then send `arguments`
/// (what came before the name, often empty).
#[derive(Debug, Default, PartialEq)]
pub struct NewCall {
    /// The upstream's index of the call.
    pub call: usize,
    /// The provider's id (empty when it sent none).
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// What a translator does with a piece.
#[derive(Debug, PartialEq)]
pub enum Step<'a> {
    Begin(NewCall),
    /// More arguments for the open call.
    Arguments(&'a str),
}

/// The calls of one stream.
#[derive(Debug, Default)]
pub struct ToolCalls {
    /// The call whose block is open.
    open: Option<usize>,
    /// Calls that had their block.
    seen: Vec<usize>,
    /// A call waiting for its name.
    pending: Option<NewCall>,
}

impl ToolCalls {
    /// Takes one piece; returns what to do, in order (a call waiting for its name goes out
    /// as it is when another one starts).
    pub fn take<'a>(&mut self, piece: &'a ToolCallDelta) -> Vec<Step<'a>> {
        let f = piece.function.as_ref();
        let name = f.and_then(|f| f.name.as_deref()).unwrap_or("");
        let args = f.and_then(|f| f.arguments.as_deref()).unwrap_or("");
        if self.open == Some(piece.index) {
            return if args.is_empty() {
                Vec::new()
            } else {
                vec![Step::Arguments(args)]
            };
        }
        if self.seen.contains(&piece.index) {
            log::debug!(call = piece.index; "tool-call piece for a closed block dropped");
            return Vec::new();
        }
        let mut steps = Vec::new();
        let mut p = match self.pending.take() {
            Some(p) if p.call == piece.index => p,
            other => {
                self.pending = other;
                steps.extend(self.flush().map(Step::Begin));
                NewCall {
                    call: piece.index,
                    ..NewCall::default()
                }
            }
        };
        if let Some(id) = piece.id.as_deref().filter(|id| !id.is_empty()) {
            p.id = id.to_string();
        }
        p.name.push_str(name);
        p.arguments.push_str(args);
        if p.name.is_empty() {
            self.pending = Some(p);
        } else {
            steps.push(Step::Begin(self.begun(p)));
        }
        steps
    }

    /// The call waiting for its name, to start as it is (before something else starts, and
    /// at the end of the stream).
    pub fn flush(&mut self) -> Option<NewCall> {
        let p = self.pending.take()?;
        Some(self.begun(p))
    }

    /// Something else (text) took the open block's place.
    pub fn interrupt(&mut self) {
        self.open = None;
    }

    fn begun(&mut self, p: NewCall) -> NewCall {
        self.seen.push(p.call);
        self.open = Some(p.call);
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chat::stream::FunctionDelta;

    fn piece(index: usize, id: Option<&str>, name: Option<&str>, args: &str) -> ToolCallDelta {
        ToolCallDelta {
            index,
            id: id.map(str::to_string),
            function: Some(FunctionDelta {
                name: name.map(str::to_string),
                arguments: Some(args.to_string()),
            }),
        }
    }

    #[test]
    fn calls_start_once_named_and_late_pieces_are_dropped() {
        let mut t = ToolCalls::default();
        let first = piece(0, Some("a"), Some("f"), "{");
        assert_eq!(
            t.take(&first),
            [Step::Begin(NewCall {
                call: 0,
                id: "a".into(),
                name: "f".into(),
                arguments: "{".into()
            })]
        );
        let more = piece(0, None, None, "}");
        assert_eq!(t.take(&more), [Step::Arguments("}")]);
        // A call without its name yet waits, its pieces kept.
        let nameless = piece(1, Some("b"), None, "{\"x\"");
        assert!(t.take(&nameless).is_empty());
        let named = piece(1, None, Some("g"), ":1}");
        assert_eq!(
            t.take(&named),
            [Step::Begin(NewCall {
                call: 1,
                id: "b".into(),
                name: "g".into(),
                arguments: "{\"x\":1}".into()
            })]
        );
        // A piece for call 0, whose block gave way: dropped.
        let late = piece(0, None, None, "late");
        assert!(t.take(&late).is_empty());
        // Another call starting flushes one still waiting for its name.
        let waiting = piece(2, Some("c"), None, "x");
        assert!(t.take(&waiting).is_empty());
        let next = piece(3, Some("d"), Some("h"), "");
        let steps = t.take(&next);
        assert_eq!(steps.len(), 2);
        assert!(matches!(&steps[0], Step::Begin(c) if c.call == 2 && c.name.is_empty()));
        assert!(matches!(&steps[1], Step::Begin(c) if c.call == 3));
        // After text interrupted it, the open call takes no more pieces either.
        t.interrupt();
        assert!(t.take(&piece(3, None, None, "more")).is_empty());
        assert_eq!(t.flush(), None);
    }
}
