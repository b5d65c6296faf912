//! The stream translator on its own: the event order rules the SDK's stream helper checks,
//! on ordinary, odd, cut and failed streams.

use serde_json::{Value, json};

use super::stream::Translator;
use super::tests::envelope;
use crate::chat::answer::Usage;
use crate::chat::stream::Chunk;
use crate::error::Error;

/// The events a translator writes for these chunks, then the end.
fn events(chunks: &[Value], usage: Usage) -> Vec<(String, Value)> {
    let mut t = Translator::new(envelope());
    let mut out = Vec::new();
    for c in chunks {
        t.chunk(&Chunk::parse(&c.to_string()).unwrap(), &mut out)
            .unwrap();
    }
    t.done(&usage, &mut out);
    parse_frames(&out)
}

fn parse_frames(out: &[u8]) -> Vec<(String, Value)> {
    let text = String::from_utf8(out.to_vec()).unwrap();
    assert!(text.ends_with("\n\n"));
    text.split("\n\n")
        .filter(|f| !f.is_empty())
        .map(|frame| {
            let (event, data) = frame.split_once('\n').unwrap();
            let name = event.strip_prefix("event: ").unwrap().to_string();
            let data: Value = serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap();
            assert_eq!(data["type"], name.as_str(), "the event name is its type");
            (name, data)
        })
        .collect()
}

/// Checks what the SDK's stream helper checks, and more: numbering, one response id,
/// created first, items added once at the next index and done before the end, deltas
/// only for the open item, the done events' text the deltas' sum, and the final response's
/// output the items as they were done. Returns the final response.
fn assert_well_formed(ev: &[(String, Value)]) -> Value {
    assert_eq!(ev[0].0, "response.created");
    assert_eq!(ev[1].0, "response.in_progress");
    let id = ev[0].1["response"]["id"].clone();
    assert!(id.as_str().unwrap().starts_with("resp_"));
    let mut open: Option<(u64, String)> = None;
    let mut text = String::new();
    let mut done_items: Vec<Value> = Vec::new();
    let mut ended = None;
    for (n, (name, data)) in ev.iter().enumerate() {
        assert_eq!(data["sequence_number"], n as u64, "numbered from 0: {ev:?}");
        assert!(ended.is_none(), "an event after the end: {name}");
        if let Some(r) = data.get("response") {
            assert_eq!(r["id"], id, "one response id");
            assert_eq!(r["object"], "response");
        }
        let index = data["output_index"].as_u64();
        let item_id = data["item_id"].as_str().map(str::to_string);
        match name.as_str() {
            "response.output_item.added" => {
                assert!(
                    open.is_none(),
                    "an item added while another is open: {ev:?}"
                );
                let i = index.unwrap();
                assert_eq!(i as usize, done_items.len(), "indexes count up from 0");
                assert_eq!(data["item"]["status"], "in_progress");
                open = Some((i, data["item"]["id"].as_str().unwrap().to_string()));
                text.clear();
            }
            "response.content_part.added" | "response.content_part.done" => {
                assert_eq!(open.as_ref().map(|o| o.0), index);
                assert_eq!(data["content_index"], 0);
            }
            "response.output_text.delta"
            | "response.function_call_arguments.delta"
            | "response.reasoning_text.delta"
            | "response.refusal.delta" => {
                let (i, id) = open.clone().expect("a delta with no open item");
                assert_eq!(
                    (Some(i), Some(id)),
                    (index, item_id),
                    "a delta for another item"
                );
                text.push_str(data["delta"].as_str().unwrap());
            }
            "response.output_text.done" | "response.reasoning_text.done" => {
                assert_eq!(data["text"], text.as_str())
            }
            "response.refusal.done" => assert_eq!(data["refusal"], text.as_str()),
            "response.function_call_arguments.done" => {
                assert_eq!(data["arguments"], text.as_str())
            }
            "response.output_item.done" => {
                let (i, id) = open.take().expect("done without an open item");
                assert_eq!(index, Some(i));
                assert_eq!(data["item"]["id"], id.as_str());
                let item = &data["item"];
                let written = match item["type"].as_str() {
                    _ if item["content"][0]["type"] == "refusal" => &item["content"][0]["refusal"],
                    Some("message" | "reasoning") => &item["content"][0]["text"],
                    _ => &item["arguments"],
                };
                assert_eq!(written, text.as_str(), "the item holds what was streamed");
                done_items.push(item.clone());
            }
            "response.completed" | "response.incomplete" | "response.failed" => {
                ended = Some(data["response"].clone());
            }
            _ => {}
        }
    }
    let last = ended.expect("no final event");
    if last["status"] != "failed" {
        assert!(open.is_none(), "an item left open");
        assert_eq!(last["output"], Value::Array(done_items));
    }
    last
}

fn text_chunk(t: &str) -> Value {
    json!({"choices": [{"index": 0, "delta": {"content": t}}]})
}

fn finish(reason: &str) -> Value {
    json!({"choices": [{"index": 0, "delta": {}, "finish_reason": reason}]})
}

fn tool_chunk(index: usize, id: Option<&str>, name: Option<&str>, args: &str) -> Value {
    let mut f = json!({"arguments": args});
    if let Some(n) = name {
        f["name"] = json!(n);
    }
    let mut tc = json!({"index": index, "function": f});
    if let Some(id) = id {
        tc["id"] = json!(id);
    }
    json!({"choices": [{"index": 0, "delta": {"tool_calls": [tc]}}]})
}

fn names(ev: &[(String, Value)]) -> Vec<&str> {
    ev.iter().map(|(n, _)| n.as_str()).collect()
}

#[test]
fn a_text_stream_in_the_responses_order() {
    let ev = events(
        &[
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
            text_chunk("Hel"),
            text_chunk("lo"),
            finish("stop"),
            json!({"choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 2}}),
        ],
        Usage {
            prompt_tokens: Some(9),
            completion_tokens: Some(2),
            prompt_tokens_details: None,
        },
    );
    let last = assert_well_formed(&ev);
    assert_eq!(
        names(&ev),
        [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.content_part.added",
            "response.output_text.delta",
            "response.output_text.delta",
            "response.output_text.done",
            "response.content_part.done",
            "response.output_item.done",
            "response.completed"
        ]
    );
    let created = &ev[0].1["response"];
    assert_eq!(
        (
            created["status"].clone(),
            created["output"].clone(),
            created["usage"].clone()
        ),
        (json!("in_progress"), json!([]), Value::Null)
    );
    assert_eq!(
        ev[2].1["item"],
        json!({"type": "message", "id": ev[2].1["item"]["id"], "status": "in_progress",
            "role": "assistant", "content": []})
    );
    assert_eq!(
        ev[3].1["part"],
        json!({"type": "output_text", "text": "", "annotations": []})
    );
    assert_eq!(ev[4].1["logprobs"], json!([]));
    assert_eq!(last["status"], "completed");
    assert_eq!(last["output"][0]["content"][0]["text"], "Hello");
    assert_eq!(last["output"][0]["status"], "completed");
    assert_eq!(last["usage"]["input_tokens"], 9);
    assert_eq!(last["usage"]["total_tokens"], 11);
}

#[test]
fn text_then_parallel_tool_calls_each_in_its_own_item() {
    let ev = events(
        &[
            text_chunk("Checking."),
            tool_chunk(0, Some("call_a"), Some("f"), ""),
            tool_chunk(0, None, None, "{\"x\""),
            tool_chunk(0, None, None, ":1}"),
            tool_chunk(1, Some("call_b"), None, "{"),
            tool_chunk(1, None, Some("g"), "}"),
            finish("tool_calls"),
        ],
        Usage::default(),
    );
    let last = assert_well_formed(&ev);
    let out = last["output"].as_array().unwrap();
    assert_eq!(out.len(), 3);
    assert_eq!(out[0]["content"][0]["text"], "Checking.");
    assert_eq!(
        (
            out[1]["call_id"].clone(),
            out[1]["name"].clone(),
            out[1]["arguments"].clone()
        ),
        (json!("call_a"), json!("f"), json!("{\"x\":1}"))
    );
    assert_eq!(
        (
            out[2]["call_id"].clone(),
            out[2]["name"].clone(),
            out[2]["arguments"].clone()
        ),
        (json!("call_b"), json!("g"), json!("{}")),
        "added once its name came, with the pieces that waited"
    );
    let added: Vec<&Value> = ev
        .iter()
        .filter(|(n, _)| n == "response.output_item.added")
        .map(|(_, d)| &d["item"])
        .collect();
    assert_eq!(added[1]["arguments"], "", "added empty, filled by deltas");
    let args_done = ev
        .iter()
        .find(|(n, _)| n == "response.function_call_arguments.done")
        .unwrap();
    assert_eq!(args_done.1["name"], "f");
    assert_eq!(last["status"], "completed");
    assert_eq!(
        last["usage"]["input_tokens"], 0,
        "not reported: 0, never missing"
    );
}

#[test]
fn odd_streams_stay_well_formed() {
    // Nothing at all: one empty message.
    let ev = events(&[], Usage::default());
    let last = assert_well_formed(&ev);
    assert_eq!(last["output"][0]["content"][0]["text"], "");
    // Text after a tool call opens a new message; a late piece of a finished call is dropped.
    let ev = events(
        &[
            tool_chunk(0, Some("a"), Some("f"), "{}"),
            text_chunk("then"),
            tool_chunk(0, None, None, "late"),
            tool_chunk(1, Some("b"), Some("g"), "{}"),
        ],
        Usage::default(),
    );
    let last = assert_well_formed(&ev);
    let kinds: Vec<&str> = last["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(kinds, ["function_call", "message", "function_call"]);
    assert!(!serde_json::to_string(&last).unwrap().contains("late"));
    // A call whose name never comes still gets its item before the end.
    let ev = events(&[tool_chunk(0, Some("a"), None, "{}")], Usage::default());
    let last = assert_well_formed(&ev);
    assert_eq!(last["output"][0]["call_id"], "a");
    // A provider that gives no call id: one is made up, the same in every event.
    let ev = events(&[tool_chunk(0, None, Some("f"), "{}")], Usage::default());
    let last = assert_well_formed(&ev);
    let made_up = last["output"][0]["call_id"].as_str().unwrap();
    assert!(made_up.starts_with("call_"));
    assert_eq!(ev[2].1["item"]["call_id"], made_up);
}

#[test]
fn a_stream_cut_at_the_token_limit_is_incomplete() {
    let ev = events(&[text_chunk("Once"), finish("length")], Usage::default());
    let last = assert_well_formed(&ev);
    assert_eq!(ev.last().unwrap().0, "response.incomplete");
    assert_eq!(last["status"], "incomplete");
    assert_eq!(
        last["incomplete_details"],
        json!({"reason": "max_output_tokens"})
    );
    assert_eq!(last["output"][0]["status"], "incomplete");
}

#[test]
fn a_failure_mid_stream_is_response_failed_with_the_output_so_far() {
    let mut t = Translator::new(envelope());
    let mut out = Vec::new();
    t.chunk(
        &Chunk::parse(&text_chunk("a").to_string()).unwrap(),
        &mut out,
    )
    .unwrap();
    t.failed(
        &Error::Upstream {
            message: "gpt41: cut".into(),
        },
        &mut out,
    );
    let ev = parse_frames(&out);
    let last = assert_well_formed(&ev);
    assert_eq!(ev.last().unwrap().0, "response.failed");
    assert_eq!(last["status"], "failed");
    assert_eq!(
        last["error"],
        json!({"code": "server_error", "message": "upstream error: gpt41: cut"})
    );
    assert_eq!(last["output"][0]["content"][0]["text"], "a");
    assert_eq!(last["output"][0]["status"], "incomplete");
    // Failing before any chunk still starts the stream properly.
    let mut t = Translator::new(envelope());
    let mut out = Vec::new();
    t.failed(
        &Error::RateLimited {
            message: "slow".into(),
            retry_after_s: 1,
        },
        &mut out,
    );
    let ev = parse_frames(&out);
    assert_eq!(
        names(&ev),
        [
            "response.created",
            "response.in_progress",
            "response.failed"
        ]
    );
    assert_eq!(ev[2].1["response"]["error"]["code"], "rate_limit_exceeded");
}

#[test]
fn reasoning_is_an_item_of_its_own_before_the_message() {
    let reason = |r: &str| json!({"choices": [{"index": 0, "delta": {"reasoning_content": r}}]});
    let ev = events(
        &[
            reason("Think"),
            reason("ing."),
            text_chunk("Hi"),
            tool_chunk(0, Some("c1"), Some("f"), "{}"),
            finish("tool_calls"),
        ],
        Usage::default(),
    );
    let last = assert_well_formed(&ev);
    let types: Vec<&str> = last["output"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["reasoning", "message", "function_call"]);
    let reasoning = &last["output"][0];
    assert!(reasoning["id"].as_str().unwrap().starts_with("rs_"));
    assert_eq!(
        (&reasoning["summary"], &reasoning["content"]),
        (
            &json!([]),
            &json!([{"type": "reasoning_text", "text": "Thinking."}])
        )
    );
    assert_eq!(
        names(&ev)[2..6],
        [
            "response.output_item.added",
            "response.content_part.added",
            "response.reasoning_text.delta",
            "response.reasoning_text.delta"
        ]
    );
}

#[test]
fn content_parts_are_a_reasoning_item_and_the_message() {
    // Mistral's Magistral streams its content as lists of parts.
    let delta = |d: Value| json!({"choices": [{"index": 0, "delta": d}]});
    let ev = events(
        &[
            delta(
                json!({"content": [{"type": "thinking", "thinking": [{"type": "text", "text": "hmm"}]}]}),
            ),
            delta(json!({"content": [{"type": "text", "text": "Hello "}]})),
            delta(json!({"content": "world"})),
            finish("stop"),
        ],
        Usage::default(),
    );
    let last = assert_well_formed(&ev);
    assert_eq!(
        (&last["output"][0]["type"], &last["output"][0]["content"]),
        (
            &json!("reasoning"),
            &json!([{"type": "reasoning_text", "text": "hmm"}])
        )
    );
    assert_eq!(last["output"][1]["content"][0]["text"], "Hello world");
    assert_eq!(last["output"].as_array().unwrap().len(), 2);
}

#[test]
fn a_refusal_is_a_message_with_a_refusal_part() {
    let refuse = |r: &str| json!({"choices": [{"index": 0, "delta": {"refusal": r}}]});
    let ev = events(
        &[
            json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": null, "refusal": null}}]}),
            refuse("I can't "),
            refuse("help."),
            finish("stop"),
        ],
        Usage::default(),
    );
    let last = assert_well_formed(&ev);
    assert_eq!(last["output"].as_array().unwrap().len(), 1);
    let item = &last["output"][0];
    assert_eq!(
        (&item["type"], &item["content"]),
        (
            &json!("message"),
            &json!([{"type": "refusal", "refusal": "I can't help."}])
        )
    );
    assert!(names(&ev).contains(&"response.refusal.delta"));
}

#[test]
fn a_surrogate_pair_split_across_two_deltas_is_one_character() {
    let raw =
        |json: &str| format!(r#"{{"choices":[{{"index":0,"delta":{{"content":"{json}"}}}}]}}"#);
    let run = |payloads: &[String]| {
        let mut t = Translator::new(envelope());
        let mut out = Vec::new();
        for p in payloads {
            t.chunk(&Chunk::parse(p).unwrap(), &mut out).unwrap();
        }
        t.done(&Usage::default(), &mut out);
        let ev = parse_frames(&out);
        let response = assert_well_formed(&ev);
        let deltas: String = ev
            .iter()
            .filter(|(n, _)| n == "response.output_text.delta")
            .filter_map(|(_, d)| d["delta"].as_str())
            .collect();
        let text = response["output"][0]["content"][0]["text"].clone();
        (deltas, text)
    };
    let (deltas, text) = run(&[raw(r"A\ud83d"), raw(r"\ude00B")]);
    assert_eq!(deltas, "A\u{1F600}B");
    assert_eq!(text, "A\u{1F600}B");
    // A lone half stays U+FFFD, the last one too.
    let (deltas, text) = run(&[raw(r"A\ud83d"), raw("B"), raw(r"\ude00C\ud83d")]);
    assert_eq!(deltas, "A\u{fffd}B\u{fffd}C\u{fffd}");
    assert_eq!(text, "A\u{fffd}B\u{fffd}C\u{fffd}");
}

#[test]
fn a_call_without_arguments_has_an_empty_object_for_them() {
    let ev = events(
        &[
            tool_chunk(0, Some("call_a"), Some("now"), ""),
            finish("tool_calls"),
        ],
        Usage::default(),
    );
    let last = assert_well_formed(&ev);
    assert_eq!(last["output"][0]["arguments"], "{}");
    let args_done = ev
        .iter()
        .find(|(n, _)| n == "response.function_call_arguments.done")
        .unwrap();
    assert_eq!(args_done.1["arguments"], "{}", "JSON a client can parse");
}

/// A blank piece of text or reasoning in the middle of a call's arguments (a line break
/// some models send) neither closes the call's item nor cuts its arguments.
#[test]
fn a_blank_between_a_calls_pieces_keeps_the_call_whole() {
    let reasoning = json!({"choices": [{"index": 0, "delta": {"reasoning_content": "\n"}}]});
    let ev = events(
        &[
            tool_chunk(0, Some("c1"), Some("f"), "{\"a\":"),
            text_chunk("\n"),
            reasoning,
            tool_chunk(0, None, None, "1}"),
            finish("tool_calls"),
        ],
        Usage::default(),
    );
    let last = assert_well_formed(&ev);
    let output = last["output"].as_array().unwrap().clone();
    assert_eq!(output.len(), 1, "one item: the call: {output:?}");
    assert_eq!(output[0]["arguments"], "{\"a\":1}");
}
