use std::collections::VecDeque;
use std::sync::atomic::AtomicUsize;
use std::sync::mpsc;

use super::*;
use crate::util::clock::ManualClock;

/// A scripted Ollama: the tag list and context lengths it reports, and the calls it got.
#[derive(Default)]
struct Script {
    tags: Mutex<Option<Result<Vec<Tag>, Failure>>>,
    contexts: Mutex<HashMap<String, Result<u64, Failure>>>,
    tag_calls: AtomicUsize,
    /// The name of the thread of each `tags` call.
    tag_threads: Mutex<Vec<String>>,
    show_calls: Mutex<Vec<String>>,
    /// When set, each `tags` call reports that it started, then answers with what arrives
    /// on the next gate in the queue (one gate per call, in order of calls).
    started: Mutex<Option<mpsc::Sender<()>>>,
    gates: Mutex<VecDeque<crossbeam_channel::Receiver<Vec<Tag>>>>,
    /// The name of the thread of each `context_length` call.
    show_threads: Mutex<Vec<String>>,
    /// Each `context_length` call moves this clock on by this much (a slow Ollama).
    show_takes: Mutex<Option<(Arc<ManualClock>, Duration)>>,
    /// The `/api/show` of this model reports that it started, then waits for a release
    /// (or 10 s, then fails).
    show_gate: Mutex<Option<ShowGate>>,
}

struct ShowGate {
    name: String,
    started: mpsc::Sender<()>,
    release: crossbeam_channel::Receiver<()>,
}

impl Script {
    /// Holds the `/api/show` of `name`: returns (started, release).
    fn hold_show(&self, name: &str) -> (mpsc::Receiver<()>, crossbeam_channel::Sender<()>) {
        let (started, started_rx) = mpsc::channel();
        let (release_tx, release) = crossbeam_channel::unbounded();
        *lock(&self.show_gate) = Some(ShowGate {
            name: name.to_string(),
            started,
            release,
        });
        (started_rx, release_tx)
    }
}

impl Script {
    fn set(&self, names: &[&str]) {
        let tags = names
            .iter()
            .map(|n| Tag {
                name: n.to_string(),
                digest: format!("sha256:{n}"),
            })
            .collect();
        *lock(&self.tags) = Some(Ok(tags));
    }

    fn set_tags(&self, tags: Vec<Tag>) {
        *lock(&self.tags) = Some(Ok(tags));
    }

    fn fail(&self, failure: Failure) {
        *lock(&self.tags) = Some(Err(failure));
    }

    fn context(&self, name: &str, result: Result<u64, Failure>) {
        lock(&self.contexts).insert(name.to_string(), result);
    }

    fn tag_calls(&self) -> usize {
        self.tag_calls.load(Ordering::SeqCst)
    }

    fn shows(&self) -> Vec<String> {
        lock(&self.show_calls).clone()
    }
}

impl Source for Arc<Script> {
    fn tags(&self) -> Result<Vec<Tag>, Failure> {
        self.tag_calls.fetch_add(1, Ordering::SeqCst);
        let me = thread::current().name().unwrap_or("").to_string();
        lock(&self.tag_threads).push(me);
        let gate = lock(&self.gates).pop_front();
        if let Some(gate) = gate {
            if let Some(started) = lock(&self.started).as_ref() {
                let _ = started.send(());
            }
            return gate.recv().map_err(|_| Failure::Bad("gate closed".into()));
        }
        lock(&self.tags)
            .clone()
            .unwrap_or_else(|| Err(Failure::Down("not scripted".into())))
    }

    fn context_length(&self, name: &str) -> Result<u64, Failure> {
        lock(&self.show_calls).push(name.to_string());
        let me = thread::current().name().unwrap_or("").to_string();
        lock(&self.show_threads).push(me);
        if let Some((clock, by)) = lock(&self.show_takes).as_ref() {
            clock.advance(*by);
        }
        let gate = lock(&self.show_gate)
            .as_ref()
            .filter(|g| g.name == name)
            .map(|g| (g.started.clone(), g.release.clone()));
        if let Some((started, release)) = gate {
            let _ = started.send(());
            if release.recv_timeout(Duration::from_secs(10)).is_err() {
                return Err(Failure::Bad("held too long".into()));
            }
        }
        lock(&self.contexts).get(name).cloned().unwrap_or(Ok(4096))
    }
}

fn registry() -> (Arc<Ollama>, Arc<Script>, Arc<ManualClock>) {
    let script = Arc::new(Script::default());
    let clock = Arc::new(ManualClock::new());
    let ollama = Ollama::with_source(
        "http://127.0.0.1:11434".into(),
        clock.clone(),
        Box::new(script.clone()),
    );
    (Arc::new(ollama), script, clock)
}

fn shorts(o: &Ollama) -> Vec<String> {
    o.models().into_iter().map(|m| m.short).collect()
}

fn found(l: Lookup) -> OllamaModel {
    match l {
        Lookup::Found(m) => m,
        other => panic!("expected Found, got {other:?}"),
    }
}

#[test]
fn short_codes_of_real_world_names() {
    for (name, code) in [
        ("gemma3:4b", "ollama-gemma3-4b"),
        ("qwen3:latest", "ollama-qwen3"),
        ("llama3.2-vision:latest", "ollama-llama3.2-vision"),
        ("deepseek-r1:1.5b", "ollama-deepseek-r1-1.5b"),
        (
            "hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q4_K_M",
            "ollama-hf.co-bartowski-Llama-3.2-1B-Instruct-GGUF-Q4_K_M",
        ),
        (
            "library/mistral:7b-instruct-v0.3-q4_0",
            "ollama-library-mistral-7b-instruct-v0.3-q4_0",
        ),
        (
            "hf.co/unsloth/Qwen3-8B-GGUF:latest",
            "ollama-hf.co-unsloth-Qwen3-8B-GGUF",
        ),
        // Case is kept; a trailing `latest` is dropped in any case.
        ("MyModel:7B", "ollama-MyModel-7B"),
        ("Llama3:LATEST", "ollama-Llama3"),
        // Only one trailing `-latest`, and never the whole name.
        ("foo-latest:latest", "ollama-foo-latest"),
        ("latest", "ollama-latest"),
        (":latest", "ollama--latest"),
        ("qwen3", "ollama-qwen3"),
        ("modèle:é", "ollama-modèle-é"),
    ] {
        assert_eq!(short_code(name), code, "{name}");
    }
}

#[test]
fn colliding_codes_get_suffixes_in_name_order() {
    let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    // `a/b:c` and `a:b-c` both map to `ollama-a-b-c`; `/` sorts before `:`.
    assert_eq!(
        assign_short_codes(&names(&["a:b-c", "a/b:c"])),
        ["ollama-a-b-c-2", "ollama-a-b-c"]
    );
    // Codes equal but for case collide too (matching is case-insensitive).
    assert_eq!(
        assign_short_codes(&names(&["foo:1", "Foo:1"])),
        ["ollama-foo-1-2", "ollama-Foo-1"]
    );
    // A suffix never takes a code another model has of its own.
    let v = names(&["x:1", "x/1", "x:1-2"]);
    assert_eq!(
        assign_short_codes(&v),
        ["ollama-x-1-3", "ollama-x-1", "ollama-x-1-2"]
    );
    // The same names in any order give the same codes.
    let mut rev = v.clone();
    rev.reverse();
    let mut a: Vec<(String, String)> = v.iter().cloned().zip(assign_short_codes(&v)).collect();
    let mut b: Vec<(String, String)> = rev.iter().cloned().zip(assign_short_codes(&rev)).collect();
    a.sort();
    b.sort();
    assert_eq!(a, b);
    // Three of a kind, in byte order of names: `M:latest` < `m` < `m:latest`.
    assert_eq!(
        assign_short_codes(&names(&["m:latest", "m", "M:latest"])),
        ["ollama-m-3", "ollama-m-2", "ollama-M"]
    );
}

#[test]
fn tags_are_parsed_from_ollamas_answer() {
    let body = br#"{"models":[
        {"name":"gemma3:4b","model":"gemma3:4b","modified_at":"2025-05-01T10:00:00Z",
         "size":3338801804,"digest":"a2af6cc3eb7f","details":{"family":"gemma3",
         "parameter_size":"4.3B","quantization_level":"Q4_K_M"}},
        {"model":"qwen3:latest","digest":"e4b5"},
        {"name":"gemma3:4b","digest":"dup"},
        {"name":""}, {"name":"has space:1"}, {"name":5}, "junk", {"digest":"x"},
        {"name":"  trimmed:1  "}
    ]}"#;
    let tags = parse_tags(body).unwrap();
    assert_eq!(
        tags,
        [
            Tag {
                name: "gemma3:4b".into(),
                digest: "a2af6cc3eb7f".into()
            },
            Tag {
                name: "qwen3:latest".into(),
                digest: "e4b5".into()
            },
            Tag {
                name: "trimmed:1".into(),
                digest: String::new()
            },
        ]
    );
    assert_eq!(parse_tags(br#"{"models":[]}"#).unwrap(), []);
    assert_eq!(parse_tags(br#"{"models":null}"#).unwrap(), []);
    assert!(parse_tags(b"{}").unwrap_err().contains("no 'models'"));
    assert!(
        parse_tags(br#"{"models":{}}"#)
            .unwrap_err()
            .contains("no 'models'")
    );
    assert!(parse_tags(b"<html>").unwrap_err().contains("not JSON"));
    assert!(parse_tags(b"[]").is_err());
    let long = format!(r#"{{"models":[{{"name":"{}"}}]}}"#, "x".repeat(300));
    assert_eq!(parse_tags(long.as_bytes()).unwrap(), []);
}

#[test]
fn context_length_comes_from_model_info() {
    let gemma = br#"{"modelfile":"...","parameters":"num_ctx 2048","details":{"family":"gemma3"},
        "model_info":{"gemma3.attention.head_count":8,"gemma3.context_length":131072,
        "general.architecture":"gemma3","general.parameter_count":4299915632}}"#;
    assert_eq!(parse_context_length(gemma).unwrap(), 131072);
    // The architecture's own key wins over another `.context_length`.
    let vision = br#"{"model_info":{"aaa.vision.context_length":1,"general.architecture":"mllama",
        "mllama.context_length":131072}}"#;
    assert_eq!(parse_context_length(vision).unwrap(), 131072);
    // No architecture: the first key that ends in `.context_length`.
    assert_eq!(
        parse_context_length(br#"{"model_info":{"llama.context_length":8192}}"#).unwrap(),
        8192
    );
    assert_eq!(
        parse_context_length(br#"{"model_info":{"x.context_length":4096.0}}"#).unwrap(),
        4096
    );
    // Known not to say.
    assert_eq!(parse_context_length(br#"{"details":{}}"#).unwrap(), 0);
    assert_eq!(
        parse_context_length(br#"{"model_info":{"x.context_length":"long"}}"#).unwrap(),
        0
    );
    assert!(parse_context_length(b"garbage").is_err());
    assert!(parse_context_length(b"[1]").is_err());
}

#[test]
fn implausible_context_lengths_are_not_reported() {
    let with = |v: &str| {
        let body =
            format!(r#"{{"model_info":{{"general.architecture":"x","x.context_length":{v}}}}}"#);
        parse_context_length(body.as_bytes()).unwrap()
    };
    for v in [
        "0",
        "-1",
        "-4096",
        "1e30",
        "18446744073709551615",
        "100000001",
        "0.5",
    ] {
        assert_eq!(with(v), 0, "{v}");
    }
    for (v, n) in [
        ("1", 1),
        ("512", 512),
        ("100000000", 100_000_000),
        ("1e7", 10_000_000),
    ] {
        assert_eq!(with(v), n, "{v}");
    }
}

#[test]
fn models_carry_the_real_name_upstream_and_zero_prices() {
    let m = OllamaModel {
        short: "ollama-gemma3-4b".into(),
        name: "gemma3:4b".into(),
        context: 131072,
    }
    .to_model();
    assert_eq!(
        (m.short.as_str(), m.id.as_str(), m.provider),
        ("ollama-gemma3-4b", "gemma3:4b", Provider::Ollama)
    );
    assert_eq!(
        (m.input_price, m.output_price, m.context),
        (0.0, 0.0, 131072)
    );
    assert_eq!((m.min_temp, m.max_temp, m.max_output), (0.0, 2.0, 0));
    assert!(!m.completion_tokens && !m.is_claude());
}

#[test]
fn discovery_lists_models_by_short_code() {
    let (o, script, _) = registry();
    assert_eq!(o.status().models_found, 0);
    assert_eq!(o.status().last_discovery, None);
    script.set(&["qwen3:latest", "gemma3:4b", "a/b:c", "a:b-c"]);
    assert_eq!(o.discover(), Ok(4));
    assert_eq!(
        shorts(&o),
        [
            "ollama-a-b-c",
            "ollama-a-b-c-2",
            "ollama-gemma3-4b",
            "ollama-qwen3"
        ]
    );
    let status = o.status();
    assert_eq!(status.models_found, 4);
    assert!(status.last_discovery.is_some());
    assert_eq!(status.last_error, None);
    assert_eq!(status.endpoint, "http://127.0.0.1:11434");
}

#[test]
fn lookup_by_short_code_or_real_name_in_any_case() {
    let (o, script, _) = registry();
    script.set(&["qwen3:latest", "gemma3:4b", "Foo:1", "foo:1"]);
    o.discover().unwrap();
    assert_eq!(found(o.lookup("ollama-gemma3-4b")).name, "gemma3:4b");
    assert_eq!(found(o.lookup("OLLAMA-Gemma3-4B")).name, "gemma3:4b");
    assert_eq!(found(o.lookup("gemma3:4b")).short, "ollama-gemma3-4b");
    assert_eq!(found(o.lookup(" GEMMA3:4B ")).short, "ollama-gemma3-4b");
    // A name without a tag means `:latest`, as for Ollama itself.
    assert_eq!(found(o.lookup("qwen3")).name, "qwen3:latest");
    assert_eq!(found(o.lookup("qwen3:latest")).short, "ollama-qwen3");
    // Names equal but for case: each by its exact spelling, and by its own short code.
    assert_eq!(found(o.lookup("Foo:1")).short, "ollama-Foo-1");
    assert_eq!(found(o.lookup("foo:1")).short, "ollama-foo-1-2");
    assert_eq!(found(o.lookup("ollama-foo-1")).name, "Foo:1");
    assert_eq!(found(o.lookup("ollama-foo-1-2")).name, "foo:1");
    assert_eq!(o.lookup("gemma3"), Lookup::Unknown);
    assert_eq!(o.lookup("gpt41"), Lookup::Unknown);
}

#[test]
fn vanished_models_are_gone_and_come_back() {
    let (o, script, clock) = registry();
    script.set(&["gemma3:4b", "qwen3:latest"]);
    o.discover().unwrap();
    script.set(&["qwen3:latest"]);
    o.discover().unwrap();
    assert_eq!(shorts(&o), ["ollama-qwen3"]);
    assert_eq!(o.lookup("ollama-gemma3-4b"), Lookup::Gone);
    assert_eq!(o.lookup("gemma3:4b"), Lookup::Gone);
    assert_eq!(o.lookup("ollama-never-seen"), Lookup::Unknown);
    // An empty list drops everything.
    script.set(&[]);
    o.discover().unwrap();
    assert_eq!(o.models(), []);
    assert_eq!(o.lookup("qwen3"), Lookup::Gone);
    assert_eq!(o.status().last_error, None);
    // Pulled again: found at once through the on-demand discovery.
    clock.advance(ON_DEMAND_MIN_GAP);
    script.set(&["gemma3:4b"]);
    assert_eq!(found(o.lookup("ollama-gemma3-4b")).name, "gemma3:4b");
    assert_eq!(found(o.lookup("gemma3:4b")).short, "ollama-gemma3-4b");
}

#[test]
fn an_unreachable_ollama_drops_its_models_a_bad_answer_keeps_them() {
    let (o, script, _) = registry();
    script.set(&["gemma3:4b"]);
    o.discover().unwrap();

    script.fail(Failure::Bad(
        "GET /api/tags: no complete answer within 2 s".into(),
    ));
    assert!(o.discover().unwrap_err().contains("within 2 s"));
    assert_eq!(
        shorts(&o),
        ["ollama-gemma3-4b"],
        "slow or garbage: last list kept"
    );
    let status = o.status();
    assert!(status.last_error.unwrap().contains("within 2 s"));
    assert_eq!(status.models_found, 1);

    script.fail(Failure::Down("GET /api/tags: cannot connect".into()));
    assert!(o.discover().is_err());
    assert_eq!(o.models(), [], "connection refused: Ollama stopped");
    assert_eq!(o.lookup("gemma3:4b"), Lookup::Gone);
    assert!(o.status().last_error.unwrap().contains("cannot connect"));

    script.set(&["gemma3:4b"]);
    assert_eq!(o.discover(), Ok(1));
    assert_eq!(o.status().last_error, None);
}

#[test]
fn failures_warn_once_per_run() {
    let mut s = State::default();
    assert!(s.note_failure("a"), "first failure: WARN");
    assert!(!s.note_failure("b"), "still failing: no WARN");
    assert_eq!(s.last_error.as_deref(), Some("b"));
    assert!(s.note_success(), "recovered: INFO");
    assert!(!s.note_success());
    assert_eq!(s.last_error, None);
    assert!(s.note_failure("c"), "a new run of failures warns again");
}

#[test]
fn unknown_ollama_codes_trigger_discovery_at_most_every_5_s() {
    let (o, script, clock) = registry();
    script.set(&["gemma3:4b"]);
    assert_eq!(o.lookup("ollama-nope"), Lookup::Unknown);
    assert_eq!(
        script.tag_calls(),
        1,
        "first unknown ollama- code: discovery at once"
    );
    // The discovery found gemma3, which is now known without another call.
    assert_eq!(found(o.lookup("ollama-gemma3-4b")).name, "gemma3:4b");
    assert_eq!(script.tag_calls(), 1);

    script.set(&["gemma3:4b", "qwen3:latest"]);
    clock.advance(Duration::from_secs(4));
    assert_eq!(
        o.lookup("ollama-qwen3"),
        Lookup::Unknown,
        "within 5 s: no call"
    );
    assert_eq!(script.tag_calls(), 1);
    assert_eq!(
        o.lookup("mistral:7b"),
        Lookup::Unknown,
        "nor by a real name"
    );
    assert_eq!(script.tag_calls(), 1);
    // A name that cannot be Ollama's never triggers one.
    clock.advance(Duration::from_secs(10));
    assert_eq!(o.lookup("not a name"), Lookup::Unknown);
    assert_eq!(o.lookup(""), Lookup::Unknown);
    assert_eq!(script.tag_calls(), 1);
    assert_eq!(found(o.lookup("OLLAMA-QWEN3")).name, "qwen3:latest");
    assert_eq!(script.tag_calls(), 2);

    // A failing Ollama is asked no more often.
    script.fail(Failure::Down("refused".into()));
    clock.advance(ON_DEMAND_MIN_GAP);
    assert_eq!(o.lookup("ollama-x"), Lookup::Unknown);
    assert_eq!(o.lookup("ollama-y"), Lookup::Unknown);
    assert_eq!(script.tag_calls(), 3);
    assert_eq!(o.lookup("ollama-qwen3"), Lookup::Gone);
}

#[test]
fn an_unknown_real_name_triggers_discovery_too() {
    let (o, script, clock) = registry();
    script.set(&["gemma3:4b"]);
    o.discover().unwrap();
    // `ollama pull phi4:14b` and `ollama pull qwen3`: asked for by the names Ollama printed.
    script.set(&["gemma3:4b", "phi4:14b", "qwen3:latest"]);
    assert_eq!(found(o.lookup("phi4:14b")).short, "ollama-phi4-14b");
    assert_eq!(script.tag_calls(), 2);
    // Known now: no call.
    assert_eq!(found(o.lookup("qwen3")).name, "qwen3:latest");
    assert_eq!(script.tag_calls(), 2);

    // An untagged name (it may mean `name:latest`) asks as well, once per 5 s however many
    // unknown names come.
    script.set(&["gemma3:4b", "phi4:14b", "qwen3:latest", "mistral:latest"]);
    clock.advance(ON_DEMAND_MIN_GAP);
    assert_eq!(o.lookup("gpt-9"), Lookup::Unknown);
    assert_eq!(script.tag_calls(), 3);
    assert_eq!(found(o.lookup("mistral")).short, "ollama-mistral");
    for name in ["llama9:1b", "claude-x", "ollama-nope"] {
        assert_eq!(o.lookup(name), Lookup::Unknown);
    }
    assert_eq!(script.tag_calls(), 3);
}

#[test]
fn context_lengths_are_read_once_per_model_version() {
    let (o, script, _) = registry();
    script.set(&["gemma3:4b", "qwen3:latest"]);
    script.context("gemma3:4b", Ok(131072));
    script.context("qwen3:latest", Err(Failure::Bad("slow".into())));
    o.discover().unwrap();
    let contexts: Vec<(String, u64)> = o
        .models()
        .into_iter()
        .map(|m| (m.short, m.context))
        .collect();
    assert_eq!(
        contexts,
        [
            ("ollama-gemma3-4b".to_string(), 131072),
            ("ollama-qwen3".to_string(), 0)
        ]
    );
    assert_eq!(script.shows(), ["gemma3:4b", "qwen3:latest"]);

    // Known ones are not asked again; the failed one is.
    script.context("qwen3:latest", Ok(40960));
    o.discover().unwrap();
    assert_eq!(
        script.shows(),
        ["gemma3:4b", "qwen3:latest", "qwen3:latest"]
    );
    assert_eq!(found(o.lookup("qwen3")).context, 40960);
    o.discover().unwrap();
    assert_eq!(script.shows().len(), 3);

    // Pulled again (new digest): read again.
    script.set_tags(vec![
        Tag {
            name: "gemma3:4b".into(),
            digest: "sha256:new".into(),
        },
        Tag {
            name: "qwen3:latest".into(),
            digest: "sha256:qwen3:latest".into(),
        },
    ]);
    script.context("gemma3:4b", Ok(8192));
    o.discover().unwrap();
    assert_eq!(script.shows().len(), 4);
    assert_eq!(found(o.lookup("gemma3:4b")).context, 8192);
    assert_eq!(found(o.lookup("qwen3")).context, 40960);
}

#[test]
fn an_older_discovery_never_overwrites_a_newer_one() {
    let (o, script, _) = registry();
    let (started_tx, started_rx) = mpsc::channel();
    *lock(&script.started) = Some(started_tx);
    let (first_tx, first_rx) = crossbeam_channel::bounded(1);
    let (second_tx, second_rx) = crossbeam_channel::bounded(1);
    lock(&script.gates).extend([first_rx, second_rx]);
    let list = |name: &str| {
        vec![Tag {
            name: name.into(),
            digest: String::new(),
        }]
    };
    let wait = Duration::from_secs(10);

    let older = {
        let o = o.clone();
        thread::spawn(move || o.refresh_list())
    };
    started_rx
        .recv_timeout(wait)
        .expect("older discovery started");
    let newer = {
        let o = o.clone();
        thread::spawn(move || o.refresh_list())
    };
    started_rx
        .recv_timeout(wait)
        .expect("newer discovery started");

    // The newer one finishes first; the older one's answer, arriving later, is not applied.
    second_tx.send(list("new:1")).unwrap();
    assert_eq!(newer.join().unwrap(), Ok(1));
    assert_eq!(shorts(&o), ["ollama-new-1"]);
    first_tx.send(list("old:1")).unwrap();
    assert_eq!(older.join().unwrap(), Ok(1));
    assert_eq!(shorts(&o), ["ollama-new-1"]);
    assert_eq!(o.lookup("old:1"), Lookup::Unknown);
}

#[test]
fn the_background_thread_discovers_at_once_and_stops_promptly() {
    let (o, script, _) = registry();
    script.set(&["gemma3:4b"]);
    script.context("gemma3:4b", Ok(131072));
    o.start();
    o.start(); // a second start is a no-op
    let deadline = Instant::now() + Duration::from_secs(10);
    // (Idle again: a lookup while it reads contexts would read the list itself.)
    while o.models().first().is_none_or(|m| m.context == 0)
        || o.reading_contexts.load(Ordering::SeqCst)
    {
        assert!(Instant::now() < deadline, "background discovery ran");
        thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(script.tag_calls(), 1);

    // A model found on demand gets its context length from the woken thread, and the
    // discovery itself runs there too: the caller (a worker) does no I/O, it only waits.
    script.set(&["gemma3:4b", "qwen3:latest"]);
    script.context("qwen3:latest", Ok(40960));
    assert_eq!(found(o.lookup("ollama-qwen3")).name, "qwen3:latest");
    assert_eq!(*lock(&script.tag_threads), ["ollama", "ollama"]);
    while found(o.lookup("qwen3")).context == 0 {
        assert!(Instant::now() < deadline, "context read after a wake-up");
        thread::sleep(Duration::from_millis(2));
    }

    let stopped = Instant::now();
    o.stop();
    while !o.worker_finished() {
        assert!(
            stopped.elapsed() < Duration::from_secs(2),
            "thread ends at once"
        );
        thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(script.tag_calls(), 2, "no round after stop");
}

#[test]
fn lookup_now_answers_from_what_is_known_and_leaves_the_discovery_to_lookup() {
    let (o, script, clock) = registry();
    script.set(&["qwen3:latest"]);
    o.discover().unwrap();
    let calls = script.tag_calls();
    // Known, or not a name Ollama could have: answered at once.
    assert_eq!(
        found(o.lookup_now("ollama-qwen3").unwrap()).name,
        "qwen3:latest"
    );
    assert_eq!(o.lookup_now("two words"), Some(Lookup::Unknown));
    // An unknown code or name while an on-demand discovery is due: only `lookup` may
    // tell, and asking did not use the turn up.
    script.set(&["qwen3:latest", "gemma3:4b"]);
    assert_eq!(o.lookup_now("ollama-gemma3-4b"), None);
    assert_eq!(o.lookup_now("gemma3:4b"), None);
    assert_eq!(o.lookup_now("ollama-gemma3-4b"), None);
    assert_eq!(script.tag_calls(), calls, "lookup_now asks Ollama nothing");
    assert_eq!(found(o.lookup("ollama-gemma3-4b")).name, "gemma3:4b");
    assert_eq!(script.tag_calls(), calls + 1);
    // Within the gap after that discovery, an unknown code is answered at once.
    assert_eq!(o.lookup_now("ollama-never-seen"), Some(Lookup::Unknown));
    clock.advance(ON_DEMAND_MIN_GAP);
    assert_eq!(o.lookup_now("ollama-never-seen"), None);
}

#[test]
fn context_reads_stop_after_their_budget_and_take_turns() {
    let (o, script, clock) = registry();
    let names: Vec<String> = (0..8).map(|i| format!("m{i}:1b")).collect();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    script.set(&names);
    for name in &names {
        script.context(name, Err(Failure::Bad("no answer within 2 s".into())));
    }
    *lock(&script.show_takes) = Some((clock.clone(), DISCOVERY_TIMEOUT));

    // Reads begin at 0, 2 and 4 s; at 6 s the 5-s budget is spent. The list is complete.
    assert_eq!(o.discover(), Ok(8));
    assert_eq!(o.models().len(), 8);
    assert_eq!(script.shows(), ["m0:1b", "m1:1b", "m2:1b"]);
    // The next round takes the models never asked first.
    o.discover().unwrap();
    assert_eq!(script.shows()[3..], ["m3:1b", "m4:1b", "m5:1b"]);
    // Then the last ones never asked, then the failed ones, the oldest failure first.
    o.discover().unwrap();
    assert_eq!(script.shows()[6..], ["m6:1b", "m7:1b", "m0:1b"]);
    // A new model comes before those whose read failed.
    let mut more = names.clone();
    more.push("new:1b");
    script.set(&more);
    o.discover().unwrap();
    assert_eq!(script.shows()[9..], ["new:1b", "m1:1b", "m2:1b"]);

    // One read that takes the whole budget is still made.
    *lock(&script.show_takes) = Some((clock.clone(), Duration::from_secs(60)));
    o.discover().unwrap();
    assert_eq!(script.shows()[12..], ["m3:1b"]);
}

#[test]
fn a_model_that_left_the_list_is_not_asked_for_its_context() {
    let (o, script, _) = registry();
    script.set(&["a:1", "b:1", "c:1"]);
    let (started, release) = script.hold_show("a:1");
    let round = {
        let o = o.clone();
        thread::spawn(move || o.discover())
    };
    started
        .recv_timeout(Duration::from_secs(10))
        .expect("show of a:1 began");
    // While a:1 is read, `ollama rm b:1 c:1`, and the list is read again.
    script.set(&["a:1"]);
    assert_eq!(o.refresh_list(), Ok(1));
    release.send(()).unwrap();
    assert_eq!(round.join().unwrap(), Ok(3));
    assert_eq!(script.shows(), ["a:1"]);
    assert_eq!(found(o.lookup("a:1")).context, 4096);
}

#[test]
fn a_slow_show_holds_up_neither_a_request_nor_a_sighup() {
    let (o, script, _) = registry();
    script.set(&["slow:1"]);
    let (started, release) = script.hold_show("slow:1");
    o.start();
    started
        .recv_timeout(Duration::from_secs(10))
        .expect("the background thread reads slow:1");

    // `ollama pull new:1`, then a request for it: found at once (the request reads the list
    // itself), not after the `/api/show` under way.
    script.set(&["slow:1", "new:1"]);
    let asked = Instant::now();
    assert_eq!(found(o.lookup("new:1")).short, "ollama-new-1");
    assert!(asked.elapsed() < DISCOVERY_TIMEOUT, "{:?}", asked.elapsed());

    // A SIGHUP: the list at once; its context lengths are left to the background thread.
    script.set(&["slow:1", "new:1", "other:1"]);
    let me = thread::current().name().unwrap_or("").to_string();
    assert_eq!(o.discover(), Ok(3));
    assert_eq!(o.models().len(), 3);
    assert!(
        !lock(&script.show_threads).contains(&me),
        "{:?}",
        lock(&script.show_threads)
    );

    release.send(()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while o.models().iter().any(|m| m.context == 0) {
        assert!(
            Instant::now() < deadline,
            "contexts read by the background thread"
        );
        thread::sleep(Duration::from_millis(2));
    }
    assert!(
        lock(&script.show_threads).iter().all(|t| t == "ollama"),
        "{:?}",
        lock(&script.show_threads)
    );
    o.stop();
    while !o.worker_finished() {
        assert!(Instant::now() < deadline, "thread ends");
        thread::sleep(Duration::from_millis(1));
    }
}
