//! Content streamed or answered as a list of parts (Mistral's Magistral): text parts are
//! text, thinking parts reasoning, in a stream and a complete answer alike.

use serde_json::{Value, json};

use super::{assert_well_formed, block_starts, events, events_of, message, streamed_text};
use crate::anthropic::stream::Translator;
use crate::chat::answer::{Usage, parse_answer};

#[test]
fn content_parts_are_text_and_thinking_blocks_as_reasoning_would_be() {
    // Mistral's Magistral streams its content as lists of parts.
    let delta = |d: Value| json!({"choices": [{"index": 0, "delta": d}]});
    let chunks = [
        delta(json!({"role": "assistant", "content": ""})),
        delta(
            json!({"content": [{"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]}]}),
        ),
        delta(json!({"content": [{"type": "text", "text": "Hello "}]})),
        delta(json!({"content": "world"})),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}),
    ];
    let ev = events_of(
        Translator::new("m", 1).thinking(true),
        &chunks,
        Usage::default(),
    );
    assert_well_formed(&ev);
    let kinds: Vec<&str> = block_starts(&ev)
        .iter()
        .map(|b| b["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["thinking", "text"]);
    assert_eq!(streamed_text(&ev), "Hello world");
    let thought: Vec<&str> = ev
        .iter()
        .filter_map(|(_, d)| d["delta"]["thinking"].as_str())
        .collect();
    assert_eq!(thought, ["hmm"]);
    // Without thinking enabled, only the text.
    let ev = events(&chunks, Usage::default());
    assert_eq!(block_starts(&ev).len(), 1);
    assert_eq!(streamed_text(&ev), "Hello world");
    // A complete answer reads the same.
    let answer = parse_answer(
        br#"{"choices":[{"message":{"content":[{"type":"thinking","thinking":[{"type":"text","text":"hmm"}]},
        {"type":"text","text":"Hello world"}]},"finish_reason":"stop"}]}"#,
    )
    .unwrap();
    assert_eq!(
        message(&answer, "m", true)["content"],
        json!([{"type": "thinking", "thinking": "hmm", "signature": ""},
            {"type": "text", "text": "Hello world"}])
    );
}
