//! `"stream": true`: events relayed as they arrive (HTTP and HTTPS), usage only when asked,
//! sessions only for complete streams, errors before and after the first event, timeouts
//! per gap, clients that leave, and the quirks providers send.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::client::{self, Call, Streamed};
use crate::support::gateway::{Gateway, Options};
use crate::support::upstream::{FakeUpstream, Reply};

fn setup() -> (FakeUpstream, Gateway) {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(Options::default().upstream(&fake.base_url()));
    (fake, gw)
}

fn body(model: &str, extra: Value) -> Vec<u8> {
    let mut b = json!({"model": model, "stream": true, "messages": [{"role": "user", "content": "tell me"}]});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    serde_json::to_vec(&b).unwrap()
}

/// One content chunk.
fn piece(text: &str) -> String {
    json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]})
        .to_string()
}

/// The stream's last event is an error event with this `code`.
fn assert_ends_in_an_error_event(s: &Streamed, code: &str) {
    let last = s.chunks().pop().expect("events");
    assert_eq!(last["error"]["code"], code, "{:?}", s.payloads());
}

/// The gaps between consecutive events' arrival times.
fn gaps(s: &Streamed) -> Vec<Duration> {
    s.events.windows(2).map(|w| w[1].0 - w[0].0).collect()
}

#[test]
fn events_arrive_as_they_are_sent_not_at_the_end() {
    let (fake, gw) = setup();
    fake.push(
        Reply::chat_stream(&["one ", "two ", "three ", "four ", "five"])
            .gap(Duration::from_millis(300)),
    );
    let s = client::stream(gw.http, &Call::post(&body("gpt41", json!({}))));
    assert_eq!(s.status, 200);
    assert_eq!(s.header("content-type"), Some("text/event-stream"));
    assert!(s.complete, "ended with the last chunk");
    assert_eq!(s.text(), "one two three four five");
    assert_eq!(s.payloads().last(), Some(&"[DONE]"));
    // The content chunks come 300 ms apart at the source; relayed, they must not bunch up.
    let spaced = gaps(&s)
        .iter()
        .filter(|g| **g >= Duration::from_millis(200))
        .count();
    assert!(spaced >= 4, "gaps {:?}", gaps(&s));
    let up = fake.last_json().unwrap();
    assert_eq!(up["stream"], true);
    assert_eq!(up["stream_options"], json!({"include_usage": true}));
}

#[test]
fn events_arrive_spaced_over_https_too() {
    let fake = FakeUpstream::start();
    let mut opts = Options::default().upstream(&fake.base_url());
    opts.https = true;
    let gw = Gateway::start(opts);
    fake.push(Reply::chat_stream(&["a", "b", "c"]).gap(Duration::from_millis(300)));
    let s = client::stream_tls(
        gw.https.unwrap(),
        &gw.dir.join("certs/server.crt"),
        &Call::post(&body("gpt41", json!({}))),
    );
    assert_eq!(s.status, 200);
    assert_eq!(s.text(), "abc");
    let spaced = gaps(&s)
        .iter()
        .filter(|g| **g >= Duration::from_millis(200))
        .count();
    assert!(spaced >= 2, "gaps {:?}", gaps(&s));
}

#[test]
fn the_usage_chunk_reaches_only_clients_that_asked() {
    let (fake, gw) = setup();
    fake.push(Reply::chat_stream(&["x"]).usage(9, 2));
    let s = client::stream(gw.http, &Call::post(&body("gpt41", json!({}))));
    assert!(
        s.chunks()
            .iter()
            .all(|c| c["choices"].as_array().is_some_and(|a| !a.is_empty())),
        "{:?}",
        s.payloads()
    );

    fake.push(Reply::chat_stream(&["x"]).usage(9, 2));
    let s = client::stream(
        gw.http,
        &Call::post(&body(
            "gpt41",
            json!({"stream_options": {"include_usage": true}}),
        )),
    );
    let last = s.chunks().pop().unwrap();
    assert_eq!(last["usage"]["total_tokens"], 11);
}

#[test]
fn a_complete_stream_is_saved_to_the_session_an_aborted_one_is_not() {
    let (fake, gw) = setup();
    fake.push(Reply::chat_stream(&["Hel", "lo"]));
    let s = client::stream(
        gw.http,
        &Call::post(&body("gpt41", json!({"session_id": "s1"}))),
    );
    assert!(s.complete);
    let file = gw.dir.join("sessions/gpt41@s1.json");
    let stored: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        stored["history"],
        json!([{"role": "user", "content": "tell me"}, {"role": "assistant", "content": "Hello"}])
    );

    fake.push(Reply::chat_stream(&["cut", "off", "here"]).cut_after(2));
    let s = client::stream(
        gw.http,
        &Call::post(&body("gpt41", json!({"session_id": "s1"}))),
    );
    let last = s.chunks().pop().unwrap();
    assert_eq!(
        last["error"]["code"],
        "upstream_error",
        "{:?}",
        s.payloads()
    );
    assert!(s.complete, "the error event ends the stream properly");
    assert!(!s.payloads().contains(&"[DONE]"));
    let stored: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    assert_eq!(
        stored["history"].as_array().unwrap().len(),
        2,
        "no turn from an aborted stream"
    );
}

#[test]
fn a_failure_before_the_first_event_is_a_json_error_and_is_retried() {
    let (fake, gw) = setup();
    fake.push(Reply::error(500, "warming up"));
    fake.push(Reply::chat_stream(&["fine"]));
    let s = client::stream(gw.http, &Call::post(&body("gpt41", json!({}))));
    assert_eq!(s.status, 200);
    assert_eq!(s.text(), "fine");
    assert_eq!(fake.request_count(), 2);

    fake.push_n(3, Reply::error(503, "down"));
    let s = client::stream(gw.http, &Call::post(&body("gpt41", json!({}))));
    assert_eq!(s.status, 502);
    assert_eq!(s.header("content-type"), Some("application/json"));
    let err: Value = serde_json::from_slice(&s.body).unwrap();
    assert_eq!(err["error"]["code"], "upstream_error");
}

#[test]
fn a_stream_of_only_done_is_no_answer_and_is_retried() {
    let (fake, gw) = setup();
    fake.push(Reply::stream(["[DONE]"]));
    fake.push(Reply::chat_stream(&["fine"]));
    let s = client::stream(gw.http, &Call::post(&body("gpt41", json!({}))));
    assert_eq!((s.status, s.text()), (200, "fine".to_string()));
    assert_eq!(fake.request_count(), 2, "asked again");

    fake.push_n(3, Reply::stream(["[DONE]"]));
    let s = client::stream(gw.http, &Call::post(&body("gpt41", json!({}))));
    assert_eq!(s.status, 502);
    let err: Value = serde_json::from_slice(&s.body).unwrap();
    assert!(
        err["error"]["message"].as_str().unwrap().contains("[DONE]"),
        "{err}"
    );
}

#[test]
fn a_200_with_a_json_error_instead_of_a_stream_is_an_error() {
    let (fake, gw) = setup();
    fake.push_n(
        3,
        Reply::json(200, json!({"error": {"message": "model is loading"}})),
    );
    let s = client::stream(gw.http, &Call::post(&body("gpt41", json!({}))));
    assert_eq!(s.status, 502);
    let err: Value = serde_json::from_slice(&s.body).unwrap();
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("model is loading"),
        "{err}"
    );
}

#[test]
fn the_timeout_bounds_each_gap_not_the_whole_stream() {
    let (fake, gw) = setup();
    // Seven gaps of 400 ms: 2.8 s in all, longer than the 1 s timeout, but every gap is shorter.
    fake.push(Reply::chat_stream(&["a", "b", "c", "d"]).gap(Duration::from_millis(400)));
    let s = client::stream(gw.http, &Call::post(&body("gpt41", json!({"timeout": 1}))));
    assert_eq!(s.text(), "abcd");
    assert_eq!(s.payloads().last(), Some(&"[DONE]"));

    // A gap longer than the timeout ends the stream with a timeout's error event.
    fake.push(Reply::stream([piece("a"), piece("b")]).then_hang());
    let started = Instant::now();
    let s = client::stream(gw.http, &Call::post(&body("gpt41", json!({"timeout": 1}))));
    assert_ends_in_an_error_event(&s, "upstream_timeout");
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn a_silent_provider_gets_keepalives_to_the_client_and_still_times_out() {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(
        Options::default()
            .upstream(&fake.base_url())
            .configure(|c| c.stream_keepalive = Duration::from_millis(100)),
    );
    let count = |s: &Streamed, what: &str| String::from_utf8_lossy(&s.body).matches(what).count();
    // Gaps of 450 ms between events: at least three keep-alives in each, as SSE comments
    // (which clients skip) in the OpenAI shape...
    fake.push(Reply::chat_stream(&["Hel", "lo"]).gap(Duration::from_millis(450)));
    let s = client::stream(gw.http, &Call::post(&body("gpt41", json!({}))));
    assert_eq!(s.text(), "Hello");
    assert_eq!(s.payloads().last(), Some(&"[DONE]"));
    assert!(
        count(&s, ": keep-alive\n\n") >= 9,
        "{}",
        String::from_utf8_lossy(&s.body)
    );
    // ...and as `ping` events under /v1/messages.
    fake.push(Reply::chat_stream(&["Hel", "lo"]).gap(Duration::from_millis(450)));
    let b = json!({"model": "gpt41", "max_tokens": 64,
                   "messages": [{"role": "user", "content": "hi"}]});
    let s = client::stream_json(gw.http, "/v1/messages", &b);
    assert_eq!(s.status, 200);
    let text: String = s
        .chunks()
        .iter()
        .filter_map(|e| e["delta"]["text"].as_str())
        .collect();
    assert_eq!(text, "Hello");
    assert!(
        count(&s, "event: ping\n") >= 10,
        "{}",
        String::from_utf8_lossy(&s.body)
    );
    assert_eq!(count(&s, ": keep-alive"), 0, "pings, not comments");
    let last = s.chunks().pop().unwrap();
    assert_eq!(last["type"], "message_stop");

    // Keep-alives do not stretch the wait for the provider: a gap longer than the timeout
    // still ends the stream with an error event.
    fake.push(Reply::stream([piece("a")]).then_hang());
    let started = Instant::now();
    let s = client::stream(gw.http, &Call::post(&body("gpt41", json!({"timeout": 1}))));
    assert_ends_in_an_error_event(&s, "upstream_timeout");
    assert!(count(&s, ": keep-alive") >= 5);
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn no_keepalive_when_it_is_off() {
    let fake = FakeUpstream::start();
    let gw = Gateway::start(
        Options::default()
            .upstream(&fake.base_url())
            .configure(|c| c.stream_keepalive = Duration::ZERO),
    );
    fake.push(Reply::chat_stream(&["a", "b"]).gap(Duration::from_millis(200)));
    let s = client::stream(gw.http, &Call::post(&body("gpt41", json!({}))));
    assert_eq!(s.text(), "ab");
    assert!(!String::from_utf8_lossy(&s.body).contains("keep-alive"));
}

#[test]
fn no_first_event_in_time_is_504() {
    let (fake, gw) = setup();
    fake.set_default(Reply::hang());
    let started = Instant::now();
    let s = client::stream(gw.http, &Call::post(&body("gpt41", json!({"timeout": 1}))));
    assert_eq!(s.status, 504);
    assert!(started.elapsed() < Duration::from_secs(4));
}

#[test]
fn a_client_that_leaves_drops_the_upstream_call() {
    let (fake, gw) = setup();
    fake.push(
        Reply::chat_stream(&["a", "b", "c", "d", "e", "f", "g", "h"])
            .gap(Duration::from_millis(300)),
    );
    let b = body("gpt41", json!({"session_id": "gone"}));
    let mut call = Call::post(&b);
    call.leave_after = Some(2);
    let s = client::stream(gw.http, &call);
    assert_eq!(s.events.len(), 2);
    drop(s);
    let left = Instant::now();
    let aborted = fake.wait_for_client_aborts(1, Duration::from_secs(5));
    let closed_at = aborted[0].closed_at.unwrap();
    assert!(
        closed_at.saturating_duration_since(left) < Duration::from_secs(2),
        "upstream kept open too long"
    );
    assert!(!gw.dir.join("sessions/gpt41@gone.json").exists());
    // The worker is free again: the gateway answers.
    assert_eq!(gw.get("/api/health").status, 200);
}

#[test]
fn a_client_that_leaves_during_a_long_silence_drops_the_upstream_call() {
    let (fake, gw) = setup();
    fake.push(Reply::stream([piece("a"), piece("b")]).then_hang());
    let b = body("gpt41", json!({}));
    let mut call = Call::post(&b);
    call.leave_after = Some(2);
    let s = client::stream(gw.http, &call);
    drop(s);
    let left = Instant::now();
    let aborted = fake.wait_for_client_aborts(1, Duration::from_secs(5));
    assert!(
        aborted[0]
            .closed_at
            .unwrap()
            .saturating_duration_since(left)
            < Duration::from_secs(2)
    );
}

#[test]
fn provider_quirks_are_survived() {
    let (fake, gw) = setup();
    let chunk = |t: &str| {
        format!(r#"{{"choices":[{{"index":0,"delta":{{"content":"{t}"}},"finish_reason":null}}]}}"#)
    };
    let finish = r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}"#;
    let writes = vec![
        b": keep-alive\n\n".to_vec(),
        format!("event: message\r\nid: 1\r\ndata: {}\r\n\r\n", chunk("A")).into_bytes(),
        format!("data: {}", chunk("B")).into_bytes()[..20].to_vec(),
        format!("data: {}\n\n", chunk("B")).into_bytes()[20..].to_vec(),
        b"retry: 1000\n\n".to_vec(),
        format!("data: {finish}\n\n").into_bytes(),
        b"data: [DONE]".to_vec(),
    ];
    fake.push(Reply::chat_stream(&[]).raw_events(writes));
    let s = client::stream(
        gw.http,
        &Call::post(&body("gpt41", json!({"session_id": "q"}))),
    );
    assert_eq!(s.status, 200);
    assert_eq!(s.text(), "AB");
    assert_eq!(
        s.payloads().last(),
        Some(&"[DONE]"),
        "a last event without its blank line still counts"
    );
    let stored: Value =
        serde_json::from_slice(&std::fs::read(gw.dir.join("sessions/gpt41@q.json")).unwrap())
            .unwrap();
    assert_eq!(stored["history"][1]["content"], "AB");
}

#[test]
fn http10_clients_get_a_close_delimited_stream() {
    let (fake, gw) = setup();
    fake.push(Reply::chat_stream(&["old", "school"]));
    let b = body("gpt41", json!({}));
    let mut call = Call::post(&b);
    call.http10 = true;
    let s = client::stream(gw.http, &call);
    assert_eq!(s.status, 200);
    assert!(s.header("transfer-encoding").is_none());
    assert!(s.complete, "ended by closing the connection");
    assert_eq!(s.text(), "oldschool");
}

#[test]
fn done_reaches_the_client_at_once_when_the_provider_keeps_the_body_open() {
    // A provider that sends `[DONE]` and then neither closes nor ends its body: for a
    // close-delimited body (no length, not chunked) the connection cannot serve another
    // request, so there is nothing to wait for; for a chunked one, the end is waited for
    // after the client's answer has ended, not before it. Held back, the client's answer
    // would end only after the gateway's second of draining, at the earliest.
    let (fake, gw) = setup();
    for reply in [
        Reply::chat_stream(&["a", "b"])
            .close_delimited()
            .then_hang(),
        Reply::chat_stream(&["a", "b"]).then_hang(),
    ] {
        fake.push(reply);
        let sent = Instant::now();
        let s = client::stream(gw.http, &Call::post(&body("gpt41", json!({}))));
        let took = sent.elapsed();
        assert!(s.complete, "the answer ended");
        assert_eq!(s.text(), "ab");
        assert_eq!(s.payloads().last(), Some(&"[DONE]"));
        assert!(took < Duration::from_secs(1), "{took:?}");
    }
    // Neither connection goes back to the pool: neither body ended.
    assert!(fake.wait_for_open_connections(0, Duration::from_secs(5)));
}

#[test]
fn tool_call_fragments_are_relayed_and_gathered() {
    let (fake, gw) = setup();
    let tc = |args: &str, name: Option<&str>| {
        let mut f = json!({"arguments": args});
        if let Some(n) = name {
            f["name"] = json!(n);
        }
        json!({"choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "function": f}]}}]})
            .to_string()
    };
    fake.push(Reply::stream([
        tc("{\"city\":", Some("weather")),
        tc("\"Lyon\"}", None),
        json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "tool_calls"}]}).to_string(),
        "[DONE]".to_string(),
    ]));
    let s = client::stream(
        gw.http,
        &Call::post(&body("gpt41", json!({"session_id": "tools"}))),
    );
    assert_eq!(s.chunks().len(), 3);
    let stored: Value =
        serde_json::from_slice(&std::fs::read(gw.dir.join("sessions/gpt41@tools.json")).unwrap())
            .unwrap();
    assert_eq!(stored["history"][1]["content"], "");
    assert_eq!(
        stored["history"][1]["tool_calls"][0]["function"],
        json!({"name": "weather", "arguments": "{\"city\":\"Lyon\"}"})
    );
}

#[test]
fn tool_calls_without_an_index_are_numbered_and_kept_apart_in_the_session() {
    let (fake, gw) = setup();
    for (n, reply) in Reply::two_calls_without_an_index().into_iter().enumerate() {
        fake.push(reply.clone());
        let session = format!("calls{n}");
        let s = client::stream(
            gw.http,
            &Call::post(&body("gpt41", json!({"session_id": session}))),
        );
        // Relayed with each piece numbered by its call, as OpenAI's clients put calls
        // together by `index` (ids, names and arguments as the upstream sent them).
        assert!(s.complete, "{reply:?}");
        let calls = s.sdk_tool_calls();
        let want = [("c1", "f", "{\"a\":1}"), ("c2", "g", "{\"b\":2}")]
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()));
        assert_eq!(calls, want, "{reply:?}");
        let file = gw.dir.join(&format!("sessions/gpt41@{session}.json"));
        let stored: Value = serde_json::from_slice(&std::fs::read(file).unwrap()).unwrap();
        let kept: Vec<(&str, &str, &str)> = stored["history"][1]["tool_calls"]
            .as_array()
            .expect("the calls kept")
            .iter()
            .map(|c| {
                (
                    c["id"].as_str().unwrap_or(""),
                    c["function"]["name"].as_str().unwrap_or(""),
                    c["function"]["arguments"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            kept,
            [("c1", "f", "{\"a\":1}"), ("c2", "g", "{\"b\":2}")],
            "{reply:?}"
        );
    }
}

#[test]
fn well_formed_tool_calls_of_several_choices_go_out_as_they_came() {
    // `n` = 2: each choice numbers its own calls from 0; nothing is renumbered.
    let (fake, gw) = setup();
    let call = |choice: u64, id: Option<&str>, args: &str| {
        let mut piece = json!({"index": 0, "function": {"arguments": args}});
        if let Some(id) = id {
            piece["id"] = json!(id);
            piece["type"] = json!("function");
            piece["function"]["name"] = json!("f");
        }
        json!({"choices": [{"index": choice, "delta": {"tool_calls": [piece]}}]}).to_string()
    };
    let sent = vec![
        call(0, Some("a"), ""),
        call(1, Some("b"), ""),
        call(0, None, "{}"),
        call(1, None, "{}"),
    ];
    let mut events = sent.clone();
    events.push("[DONE]".to_string());
    fake.push(Reply::stream(events));
    let s = client::stream(gw.http, &Call::post(&body("gpt41", json!({"n": 2}))));
    let relayed: Vec<&str> = s
        .payloads()
        .into_iter()
        .filter(|p| *p != "[DONE]")
        .collect();
    assert_eq!(relayed, sent, "byte for byte");
}

#[test]
fn the_connection_stays_usable_after_a_stream() {
    let (fake, gw) = setup();
    fake.push(Reply::chat_stream(&["x"]));
    // Two requests on one keep-alive connection: a stream, then a plain GET.
    use std::io::{BufRead, BufReader, Read, Write};
    let mut sock = std::net::TcpStream::connect(gw.http).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let b = body("gpt41", json!({}));
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{}GET /api/health HTTP/1.1\r\nHost: x\r\n\r\n",
        b.len(),
        String::from_utf8_lossy(&b)
    );
    sock.write_all(req.as_bytes()).unwrap();
    let mut r = BufReader::new(sock);
    let mut all = Vec::new();
    // Read lines until the second response's head is complete, then its body by length.
    loop {
        let mut line = Vec::new();
        assert!(
            r.read_until(b'\n', &mut line).unwrap() > 0,
            "closed early: {}",
            String::from_utf8_lossy(&all)
        );
        all.extend_from_slice(&line);
        let text = String::from_utf8_lossy(&all).to_lowercase();
        if let Some(second) = text
            .match_indices("http/1.1 ")
            .nth(1)
            .map(|(i, _)| &text[i..])
            && second.ends_with("\r\n\r\n")
        {
            let len: usize = second
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            let mut rest = vec![0; len];
            r.read_exact(&mut rest).unwrap();
            all.extend_from_slice(&rest);
            break;
        }
    }
    let text = String::from_utf8_lossy(&all).to_lowercase();
    assert!(text.contains("data: [done]"), "{text}");
    assert_eq!(text.matches("http/1.1 200").count(), 2, "{text}");
    assert!(text.contains("\"uptime_s\""), "{text}");
}

#[test]
fn clients_that_leave_before_the_first_event_never_open_the_breaker() {
    use std::io::Write;
    let (fake, gw) = setup();
    fake.set_default(|_: &crate::support::upstream::Recorded| {
        Reply::chat_stream(&["late"]).first_delay(Duration::from_secs(5))
    });
    let b = body("gpt41", json!({}));
    for n in 1..=4 {
        // Like Ctrl-C on a slow model: the request is sent, then the client is gone.
        let mut sock = std::net::TcpStream::connect(gw.http).unwrap();
        let head = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            b.len()
        );
        sock.write_all(head.as_bytes()).unwrap();
        sock.write_all(&b).unwrap();
        fake.wait_for_requests(n, Duration::from_secs(5));
        drop(sock);
        fake.wait_for_client_aborts(n, Duration::from_secs(5));
    }
    let health = gw.get("/api/health").json();
    let breaker = &health["circuit_breakers"]["gpt41"];
    assert_eq!(breaker["state"], "closed", "{health}");
    assert_eq!(breaker["consecutive_failures"], 0, "{health}");
}
