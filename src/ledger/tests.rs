use super::*;
use crate::state::catalog::{Catalog, Provider};
use crate::util::fs::testdir::TestDir;

fn model(short: &str) -> Model {
    match Catalog::embedded().get(short) {
        Some(m) => m.clone(),
        None => panic!("{short} is not in the catalog"),
    }
}

fn ollama(short: &str) -> Model {
    Model::local(short, "qwen3:latest", Provider::Ollama, 0)
}

fn ledger(d: &TestDir) -> Arc<Ledger> {
    Arc::new(Ledger::open(
        d.path().join("usage.json"),
        Duration::from_secs(3600),
    ))
}

fn scrape(l: &Ledger) -> String {
    let mut e = Exposition::new();
    l.render(&mut e);
    e.finish()
}

fn ok_call(m: Model, prompt: u64, completion: u64) -> CallRecord {
    CallRecord {
        route: "chat",
        model: Some(std::sync::Arc::new(m)),
        status: 200,
        prompt_tokens: Some(prompt),
        completion_tokens: Some(completion),
        duration: Duration::from_millis(1500),
        upstream_time: Some(Duration::from_millis(1490)),
        attempts: 1,
        ..CallRecord::default()
    }
}

#[test]
fn a_call_counts_once_everywhere() {
    let d = TestDir::new("ledger-once");
    let l = ledger(&d);
    let gpt = model("gpt41");
    l.record(&ok_call(gpt.clone(), 1_000_000, 500_000));
    let text = scrape(&l);
    assert!(
        text.contains(
            "sigorest_requests_total{route=\"chat\",model=\"gpt41\",provider=\"mammouth\",status=\"200\",key=\"\"} 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("sigorest_tokens_total{model=\"gpt41\",kind=\"prompt\",key=\"\"} 1000000\n")
    );
    assert!(
        text.contains(
            "sigorest_tokens_total{model=\"gpt41\",kind=\"completion\",key=\"\"} 500000\n"
        )
    );
    let cost = gpt.input_price + gpt.output_price / 2.0;
    assert!(
        text.contains(&format!(
            "sigorest_cost_usd_total{{model=\"gpt41\",key=\"\"}} {}\n",
            registry::number(cost)
        )),
        "{text}"
    );
    assert!(text.contains(
        "sigorest_request_duration_seconds_bucket{route=\"chat\",model=\"gpt41\",le=\"2.5\"} 1\n"
    ));
    assert!(text.contains(
        "sigorest_request_duration_seconds_bucket{route=\"chat\",model=\"gpt41\",le=\"1\"} 0\n"
    ));
    // 1.5 s - 1.49 s = 10 ms of overhead.
    assert!(
        text.contains("sigorest_overhead_seconds_bucket{route=\"chat\",le=\"0.01\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("sigorest_overhead_seconds_bucket{route=\"chat\",le=\"0.005\"} 0\n"));
    assert!(
        !text.contains("sigorest_time_to_first_token_seconds_count"),
        "not a stream"
    );
    let r = l.report();
    assert_eq!(r.today.total.requests, 1);
    assert_eq!(r.today.rows[0].model, "gpt41");
    assert_eq!(r.today.rows[0].cost_usd, cost);
}

#[test]
fn refused_calls_count_under_an_empty_model_and_not_as_usage() {
    let d = TestDir::new("ledger-refused");
    let l = ledger(&d);
    for _ in 0..3 {
        let mut c = CallRecord::new("chat");
        c.status = 404;
        l.record(&c);
    }
    let text = scrape(&l);
    assert!(text.contains(
        "sigorest_requests_total{route=\"chat\",model=\"\",provider=\"\",status=\"404\",key=\"\"} 3\n"
    ));
    assert!(!text.contains("sigorest_tokens_total{"), "{text}");
    assert_eq!(l.report().all_time.total.requests, 0);
    assert!(!l.flush().unwrap(), "nothing to write");
}

#[test]
fn errors_retries_keys_and_ollama_costs() {
    let d = TestDir::new("ledger-errors");
    let l = ledger(&d);
    let mut c = ok_call(model("kimi"), 0, 0);
    c.status = 502;
    c.prompt_tokens = None;
    c.completion_tokens = None;
    c.attempts = 3;
    c.upstream_error = Some(UpstreamError::ServerError);
    c.key = Some("alice".into());
    l.record(&c);
    let mut o = ok_call(ollama("ollama-qwen3"), 10, 20);
    o.first_token = Some(Duration::from_millis(300));
    l.record(&o);
    let text = scrape(&l);
    assert!(
        text.contains(
            "sigorest_upstream_errors_total{provider=\"moonshot\",kind=\"server_error\"} 1\n"
        ),
        "{text}"
    );
    assert!(text.contains("sigorest_upstream_retries_total{provider=\"moonshot\"} 2\n"));
    assert!(text.contains("status=\"502\",key=\"alice\"} 1\n"));
    assert!(text.contains("sigorest_cost_usd_total{model=\"ollama-qwen3\",key=\"\"} 0\n"));
    assert!(text.contains(
        "sigorest_time_to_first_token_seconds_bucket{model=\"ollama-qwen3\",le=\"0.5\"} 1\n"
    ));
    let r = l.report();
    assert_eq!(r.today.total.errors, 1);
    assert_eq!(r.today.total.requests, 2);
    let alice = r
        .today
        .rows
        .iter()
        .find(|r| r.key.as_deref() == Some("alice"));
    assert_eq!(alice.map(|r| r.errors), Some(1));
    assert_eq!(
        l.upstream_errors(),
        [("moonshot".to_string(), "server_error".to_string(), 1)]
    );
}

#[test]
fn a_client_gone_is_499_and_never_an_upstream_error() {
    let mut c = CallRecord::new("chat");
    c.upstream_error = Some(UpstreamError::Connect);
    c.finish(502, Instant::now(), true);
    assert_eq!(c.status, CLIENT_GONE);
    assert_eq!(c.upstream_error, None);
    let mut c = CallRecord::new("chat");
    c.upstream_error = Some(UpstreamError::Connect);
    c.finish(502, Instant::now(), false);
    assert_eq!(
        (c.status, c.upstream_error),
        (502, Some(UpstreamError::Connect))
    );
}

#[test]
fn a_pending_stream_is_recorded_exactly_once() {
    let d = TestDir::new("ledger-pending");
    let l = ledger(&d);
    let p = l.pending(ok_call(model("gpt41"), 1, 2), Instant::now());
    p.finish(200);
    // Dropped without finishing (the body never ran): 499.
    drop(l.pending(ok_call(model("gpt41"), 0, 0), Instant::now()));
    let text = scrape(&l);
    assert!(text.contains("status=\"200\",key=\"\"} 1\n"), "{text}");
    assert!(text.contains("status=\"499\",key=\"\"} 1\n"), "{text}");
    assert_eq!(l.report().today.total.requests, 2);
}

#[test]
fn usage_is_written_in_batches_and_read_back() {
    let d = TestDir::new("ledger-flush");
    let l = ledger(&d);
    l.record(&ok_call(model("gpt41"), 3, 4));
    l.record(&ok_call(model("gpt41"), 3, 4));
    assert!(!d.path().join("usage.json").exists(), "not per request");
    assert!(l.flush().unwrap());
    assert!(!l.flush().unwrap(), "unchanged: no second write");
    l.stop();
    let again = ledger(&d);
    let r = again.report();
    assert_eq!(r.all_time.total.requests, 2);
    assert_eq!(r.all_time.total.prompt_tokens, 6);
}

#[test]
fn the_writer_thread_writes_and_stops() {
    let d = TestDir::new("ledger-writer");
    let l = Arc::new(Ledger::open(
        d.path().join("usage.json"),
        Duration::from_millis(20),
    ));
    l.start();
    l.start();
    l.record(&ok_call(model("gpt41"), 1, 1));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !d.path().join("usage.json").exists() {
        assert!(Instant::now() < deadline, "the writer never wrote");
        thread::sleep(Duration::from_millis(10));
    }
    l.record(&ok_call(model("gpt41"), 1, 1));
    l.stop();
    let back = ledger(&d);
    assert_eq!(
        back.report().all_time.total.requests,
        2,
        "stop writes the rest"
    );
}

#[test]
fn a_corrupt_file_is_moved_aside_and_an_unreadable_one_never_overwritten() {
    let d = TestDir::new("ledger-corrupt");
    std::fs::write(d.path().join("usage.json"), b"{\"vers").unwrap();
    std::fs::write(d.path().join(".usage.json.1.2.3.tmp"), b"half").unwrap();
    let l = ledger(&d);
    let names = d.names();
    assert_eq!(names.len(), 1, "{names:?}");
    assert!(names[0].starts_with("usage.json.corrupt-"), "{names:?}");
    l.record(&ok_call(model("gpt41"), 1, 1));
    assert!(l.flush().unwrap());

    // A directory where the file should be: unreadable, so never written over.
    let d = TestDir::new("ledger-unreadable");
    std::fs::create_dir(d.path().join("usage.json")).unwrap();
    let l = ledger(&d);
    l.record(&ok_call(model("gpt41"), 1, 1));
    assert!(!l.flush().unwrap());
    assert!(d.path().join("usage.json").is_dir());
    assert_eq!(
        l.report().today.total.requests,
        1,
        "still counted in memory"
    );
}

#[test]
fn upstream_failures_sort_into_kinds() {
    let status = |s| Failure::Status {
        status: s,
        retry_after: None,
        body: Vec::new(),
    };
    assert_eq!(UpstreamError::of(&status(429)), UpstreamError::RateLimited);
    assert_eq!(UpstreamError::of(&status(503)), UpstreamError::ServerError);
    assert_eq!(UpstreamError::of(&status(401)), UpstreamError::ClientError);
    assert_eq!(
        UpstreamError::of(&Failure::Timeout("t".into())),
        UpstreamError::Timeout
    );
    assert_eq!(status_label(200), "200");
    assert_eq!(status_label(1000), "other");
    assert_eq!(status_label(99), "other");
    assert_eq!(status_label(599), "599");
    assert_eq!(status_label(600), "other");
}

#[test]
fn every_metric_name_is_valid_and_prefixed() {
    let d = TestDir::new("ledger-names");
    let l = ledger(&d);
    l.record(&ok_call(model("gpt41"), 1, 1));
    for line in scrape(&l).lines().filter(|l| l.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap_or("");
        assert!(name.starts_with("sigorest_"), "{line}");
        assert!(
            name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
            "{line}"
        );
    }
}
