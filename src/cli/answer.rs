//! What an answer comes to for sigoe: its text, a refusal (which is what the model said, so
//! it is printed and kept like text), or nothing — a filtered answer, an empty one, one made
//! only of tool calls — which must not pass for success with an empty stdout, nor be kept in
//! a session as an empty assistant turn (Anthropic refuses one on the next request).

use crate::chat::answer::Answer;
use crate::chat::stream::Gathered;

/// What to print and keep, or why there is nothing.
#[derive(Debug, PartialEq)]
pub enum Outcome<'a> {
    /// The answer's text (not blank).
    Text,
    /// The model refused, in these words, and said nothing else.
    Refusal(&'a str),
    /// No text at all: why, as the one line on stderr.
    Nothing(String),
}

/// Judges an answer by its text, its refusal (empty when none) and its finish reason. Text
/// that is only white space counts as none: nothing is printable, and a provider may refuse
/// it in the session's history as it refuses empty text.
pub fn outcome<'a>(text: &str, refusal: &'a str, finish_reason: Option<&str>) -> Outcome<'a> {
    if !text.trim().is_empty() {
        return Outcome::Text;
    }
    if !refusal.trim().is_empty() {
        return Outcome::Refusal(refusal);
    }
    Outcome::Nothing(match finish_reason.filter(|r| !r.is_empty()) {
        Some("content_filter") => {
            "the provider filtered the answer (finish_reason content_filter)".to_string()
        }
        Some(reason) => format!("the model answered nothing (finish_reason {reason})"),
        None => "the model answered nothing (no finish_reason)".to_string(),
    })
}

/// What a whole (not streamed) answer comes to.
pub(super) fn whole_outcome<'a>(parsed: &'a Answer, text: &str) -> Outcome<'a> {
    outcome(text, &parsed.refusal, parsed.finish_reason.as_deref())
}

/// What sigoe's `print_stream` saw of a stream that ended well.
pub(super) struct Streamed {
    pub gathered: Gathered,
    /// Whether any text that is not white space came.
    pub text: bool,
    pub refusal: String,
    pub finish_reason: Option<String>,
}

impl Streamed {
    pub fn outcome(&self) -> Outcome<'_> {
        let text = if self.text { "text" } else { "" };
        outcome(text, &self.refusal, self.finish_reason.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_then_a_refusal_then_why_there_is_nothing() {
        assert_eq!(outcome("Hi", "", Some("stop")), Outcome::Text);
        assert_eq!(outcome("Hi", "no", Some("stop")), Outcome::Text);
        assert_eq!(
            outcome("", "I cannot help", Some("stop")),
            Outcome::Refusal("I cannot help")
        );
        assert_eq!(
            outcome(" \n", "I cannot help", None),
            Outcome::Refusal("I cannot help")
        );
        let cases = [
            (
                Some("content_filter"),
                "the provider filtered the answer (finish_reason content_filter)",
            ),
            (
                Some("stop"),
                "the model answered nothing (finish_reason stop)",
            ),
            (
                Some("tool_calls"),
                "the model answered nothing (finish_reason tool_calls)",
            ),
            (None, "the model answered nothing (no finish_reason)"),
            (Some(""), "the model answered nothing (no finish_reason)"),
        ];
        for (reason, why) in cases {
            assert_eq!(
                outcome(" \n\t", " ", reason),
                Outcome::Nothing(why.into()),
                "{reason:?}"
            );
        }
    }
}
