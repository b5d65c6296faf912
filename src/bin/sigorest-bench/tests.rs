//! The bench's own tests (`cargo test` runs them with the binary's unit tests): its flags,
//! a short run of its load generator against its in-process fake upstream only
//! (`-direct-only`: no gateway binary needed), and compare mode against stand-in gateways
//! ([`standin`]: pass-through proxies, one in this process in sigorest's place, one started
//! by `-compare-cmd`). No timing assertions: only that everything was measured and nothing
//! failed.

use std::ffi::OsString;

use serde_json::Value;

use crate::gateway::free_port;
use crate::subject::Source;
use crate::{BenchError, Command, Options, parse_args, run};

mod standin;

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        let dir = std::env::temp_dir().join(format!("sigorest-bench-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    fn join(&self, name: &str) -> std::path::PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The bench's JSON file, read back.
fn saved(path: impl AsRef<std::path::Path>) -> Value {
    serde_json::from_slice(&std::fs::read(path).expect("the JSON file")).expect("JSON")
}

fn args(list: &[&str]) -> Vec<OsString> {
    list.iter().map(OsString::from).collect()
}

#[test]
fn flags_are_checked() {
    let Ok(Command::Run(o)) = parse_args(args(&["-quick", "-levels=2,5"])) else {
        panic!("-quick -levels=2,5 should parse");
    };
    assert_eq!(o.levels, [2, 5]);
    assert_eq!(o.duration.as_secs(), 1);
    assert_eq!(o.parallel, 100);
    assert!(matches!(parse_args(args(&["-help"])), Ok(Command::Help)));
    assert!(o.compare.is_none() && o.fake_port == 0);
    assert_eq!(o.rounds, 1);
    assert!(matches!(o.gateway, Source::Sigorest(_)));
    for bad in [
        &["-levels", "0"][..],
        &["-levels", "1,x"],
        &["-duration", "0"],
        &["-stream-events", "0"],
        &["-bogus"],
        &["-fake-port", "70000"],
        &["-rounds", "0"],
        &["-rounds", "21"],
    ] {
        assert!(
            matches!(parse_args(args(bad)), Err(BenchError::Usage(_))),
            "{bad:?} should be refused"
        );
    }
}

#[test]
fn compare_flags_are_checked() {
    let Ok(Command::Run(o)) = parse_args(args(&[
        "-compare-cmd",
        "A={upstream} target/release/sigorest -http-port {port} -https-port 0 -q",
        "-compare-env=B={slow_upstream}",
        "-compare-env",
        "C=3",
        "-compare-model",
        "gpt-4.1",
    ])) else {
        panic!("-compare-cmd should parse");
    };
    let c = o.compare.expect("a gateway to compare with");
    assert_eq!(
        (c.name.as_str(), c.calls.path.as_str()),
        ("other", "/v1/chat/completions")
    );
    assert_eq!(
        (c.calls.model.as_str(), c.calls.slow_model.as_str()),
        ("gpt-4.1", "kimi")
    );
    let Source::Command(t) = c.source else {
        panic!("a command");
    };
    assert_eq!(t.words[0], "target/release/sigorest");
    let names: Vec<&str> = t.env.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["A", "B", "C"]);

    let Ok(Command::Run(o)) = parse_args(args(&[
        "-fake-port",
        "8999",
        "-compare-url",
        "http://127.0.0.1:9080",
        "-compare-pid",
        "42",
        "-compare-name",
        "sigoREST",
        "-compare-path",
        "/chat/completions",
    ])) else {
        panic!("-compare-url should parse");
    };
    assert_eq!(o.fake_port, 8999);
    let c = o.compare.expect("a gateway to compare with");
    assert_eq!(
        (c.name.as_str(), c.calls.path.as_str()),
        ("sigoREST", "/chat/completions")
    );
    assert!(matches!(c.source, Source::Url { addr, pid: Some(42), .. } if addr.port() == 9080));
    for bad in [
        &["-compare-url", "http://127.0.0.1:1"][..],
        &["-fake-port", "9", "-compare-url", "https://127.0.0.1:1"],
        &[
            "-fake-port",
            "9",
            "-compare-url",
            "http://127.0.0.1:1",
            "-compare-cmd",
            "gw {port}",
        ],
        &[
            "-fake-port",
            "9",
            "-compare-url",
            "http://127.0.0.1:1",
            "-compare-env",
            "A=1",
        ],
        &["-compare-cmd", "gw -p 80"],
        &["-compare-cmd", "gw {port} | tee log"],
        &["-compare-cmd", "gw {port}", "-compare-pid", "12"],
        &["-compare-cmd", "gw {port}", "-compare-env", "nope"],
        &["-compare-cmd", "gw {port}", "-compare-path", "v1/chat"],
        &["-compare-cmd", "gw {port}", "-compare-name", "a|b"],
        &["-compare-cmd", "gw {port}", "-direct-only"],
        &["-compare-model", "x"],
    ] {
        assert!(
            matches!(parse_args(args(bad)), Err(BenchError::Usage(_))),
            "{bad:?} should be refused"
        );
    }
}

#[test]
fn a_quick_direct_run_measures_the_fake_upstream() {
    let dir = TempDir::new("bench");
    let json = dir.join("bench.json");
    let json_arg = json.to_string_lossy().into_owned();
    let Ok(Command::Run(opts)) = parse_args(args(&[
        "-quick",
        "-direct-only",
        "-levels",
        "1,3",
        "-stream-events",
        "3",
        "-stream-gap-ms",
        "1",
        "-parallel",
        "4",
        "-slow-ms",
        "50",
        "-json",
        &json_arg,
    ])) else {
        panic!("the flags should parse");
    };
    let mut out = Vec::new();
    let report = run(&opts, &mut out).expect("the bench runs");

    let tables = String::from_utf8(out).unwrap();
    assert!(tables.contains("| 1 | direct |"), "{tables}");
    assert!(tables.contains("| 3 | direct |"), "{tables}");
    assert!(!tables.contains("| gateway |"), "{tables}");

    assert_eq!(report.json.len(), 2);
    for row in &report.json {
        assert!(row.direct.requests > 0, "{row:?}");
        assert_eq!(row.direct.errors, 0, "{row:?}");
        assert!(row.direct.p50_ms > 0.0 && row.direct.p50_ms <= row.direct.max_ms);
        assert!(row.gateway.is_none() && row.process.is_none());
    }
    assert_eq!(report.stream.len(), 2);
    for row in &report.stream {
        assert!(row.direct.streams > 0, "{row:?}");
        assert_eq!(row.direct.errors, 0, "{row:?}");
        assert!(row.direct.first_event_p50_ms > 0.0, "{row:?}");
        assert!(
            row.direct.event_max_ms >= row.direct.event_p50_ms,
            "{row:?}"
        );
    }
    let parallel = report.parallel.as_ref().expect("the parallel test ran");
    assert_eq!((parallel.calls, parallel.direct_errors), (4, 0));
    assert!(
        parallel.direct_s >= 0.05,
        "the slow path waits: {parallel:?}"
    );
    assert!(report.gateway_process.is_none());

    // The JSON file holds the same numbers, for comparing runs.
    let saved = saved(&json);
    assert_eq!(saved["settings"]["levels"], serde_json::json!([1, 3]));
    assert_eq!(saved["json"][1]["concurrency"], 3);
    assert_eq!(
        saved["json"][0]["direct"]["requests"],
        report.json[0].direct.requests
    );
    assert!(saved["stream"][0]["direct"]["event_p99_ms"].is_number());
}

/// The bench's options for a short run with the fake on `fake_port`, JSON at `json`.
fn short_run(fake_port: u16, json: &str, more: &[&str]) -> Options {
    let port = fake_port.to_string();
    let mut list = vec![
        "-duration",
        "0.3",
        "-levels",
        "1,2",
        "-stream-events",
        "3",
        "-stream-gap-ms",
        "1",
        "-parallel",
        "4",
        "-slow-ms",
        "50",
        "-fake-port",
        &port,
        "-json",
        json,
    ];
    list.extend_from_slice(more);
    match parse_args(args(&list)) {
        Ok(Command::Run(o)) => *o,
        other => panic!("{list:?} should parse: {other:?}"),
    }
}

/// A stand-in for sigorest in this process, in front of the fake on `fake_port`.
fn stand_in_sigorest(fake_port: u16) -> standin::Proxy {
    standin::Proxy::start(
        0,
        standin::Route {
            base: format!("http://127.0.0.1:{fake_port}/v1"),
            slow_base: format!("http://127.0.0.1:{fake_port}/delay-50/v1"),
            slow_model: "kimi".into(),
        },
    )
    .expect("start the stand-in")
}

fn at_url(proxy: &standin::Proxy) -> Source {
    Source::Url {
        url: format!("http://{}", proxy.addr),
        addr: proxy.addr,
        pid: None,
    }
}

/// Not a test of its own: the stand-in gateway process that
/// `compare_mode_measures_both_gateways` starts by command (this test binary again, on this
/// test alone). Without its environment it returns at once.
#[test]
#[ignore]
fn stand_in_gateway_process() {
    let (Ok(port), Ok(base), Ok(slow_base)) = (
        std::env::var("STANDIN_PORT"),
        std::env::var("STANDIN_UPSTREAM"),
        std::env::var("STANDIN_SLOW_UPSTREAM"),
    ) else {
        return;
    };
    let route = standin::Route {
        base,
        slow_base,
        slow_model: "kimi".into(),
    };
    let _proxy = standin::Proxy::start(port.parse().expect("a port"), route).expect("listen");
    // Until the bench stops it.
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[test]
fn compare_mode_measures_both_gateways() {
    let dir = TempDir::new("compare");
    let json = dir.join("bench.json").to_string_lossy().into_owned();
    let fake_port = free_port().expect("a free port");
    let exe = std::env::current_exe().expect("the test binary");
    let cmd = format!(
        "STANDIN_PORT={{port}} '{}' tests::stand_in_gateway_process --exact --ignored --test-threads 1",
        exe.display()
    );
    let mut opts = short_run(
        fake_port,
        &json,
        &[
            "-compare-cmd",
            &cmd,
            "-compare-env",
            "STANDIN_UPSTREAM={upstream}",
            "-compare-env",
            "STANDIN_SLOW_UPSTREAM={slow_upstream}",
            "-compare-name",
            "standin",
        ],
    );
    let sigorest = stand_in_sigorest(fake_port);
    opts.gateway = at_url(&sigorest);
    let mut out = Vec::new();
    let report = run(&opts, &mut out).expect("the bench runs");
    let tables = String::from_utf8(out).unwrap();
    check_compare_rows(&report, &tables);
    let p = report.parallel.as_ref().unwrap();
    assert_eq!(
        (p.gateway_errors, p.compare_errors),
        (Some(0), Some(0)),
        "{p:?}"
    );
    assert!(
        p.compare_s.is_some_and(|s| s >= 0.05),
        "the slow path waits: {p:?}"
    );
    let proc_row = report
        .compare_process
        .as_ref()
        .expect("the other's process");
    assert!(proc_row.rss_idle_kb > 0 && proc_row.peak_rss_kb >= proc_row.rss_idle_kb);
    assert!(report.gateway_process.is_none());
    assert_eq!(report.targets.len(), 5);
    let at_1 = &report.targets[0];
    assert!(at_1.value.is_some() && at_1.compare_value.is_some() && at_1.met.is_some());
    assert!(
        report.targets[3].compare_value.is_some(),
        "idle RSS of the other"
    );
    assert!(
        tables.contains("sigorest compared with standin"),
        "{tables}"
    );
    assert!(
        tables.contains("| added latency p50 at concurrency 1 | ≤ 0.1 ms |"),
        "{tables}"
    );

    let saved = saved(&json);
    assert_eq!(saved["settings"]["compare"]["name"], "standin");
    assert_eq!(
        saved["settings"]["compare"]["env"],
        serde_json::json!(["STANDIN_PORT", "STANDIN_UPSTREAM", "STANDIN_SLOW_UPSTREAM"])
    );
    assert_eq!(saved["settings"]["fake_port"], fake_port);
    assert!(saved["json"][0]["compare"]["per_s"].is_number());
    assert!(saved["json"][0]["compare"]["added_p50_ms"].is_number());
    assert!(saved["json"][0]["gateway_per_compare"].is_number());
    let bench_cpu = saved["json"][0]["direct"]["bench_cpu_us"].as_f64();
    assert!(bench_cpu.is_some_and(|us| us > 0.0), "{bench_cpu:?}");
    let other_cpu = saved["json"][0]["compare"]["process"]["cpu_us"].as_f64();
    assert!(other_cpu.is_some_and(|us| us >= 0.0), "{other_cpu:?}");
    assert!(tables.contains("| standin CPU µs/req |"), "{tables}");
    assert!(saved["stream"][1]["compare"]["event_p99_ms"].is_number());
    assert!(saved["targets"][0]["met"].is_boolean());
}

/// Every level has a row for both gateways, without errors, and the other's process.
fn check_compare_rows(report: &crate::report::Report, tables: &str) {
    for row in &report.json {
        let (g, c) = (row.gateway.as_ref().unwrap(), row.compare.as_ref().unwrap());
        assert!(g.requests > 0 && c.latency.requests > 0, "{row:?}");
        assert_eq!(
            (row.direct.errors, g.errors, c.latency.errors),
            (0, 0, 0),
            "{row:?}"
        );
        assert!(row.gateway_per_compare.is_some() && row.compare_share_of_direct.is_some());
        // The bench started the other one: it read its process, not sigorest's (a URL).
        assert!(row.process.is_none(), "{row:?}");
        let p = c.process.expect("the command's process is watched");
        assert!(p.peak_rss_kb > 0 && p.threads_max > 0, "{p:?}");
        let n = row.concurrency;
        assert!(tables.contains(&format!("| {n} | standin |")), "{tables}");
        assert!(tables.contains(&format!("| {n} | sigorest |")), "{tables}");
    }
    for row in &report.stream {
        let c = row.compare.as_ref().expect("streams through the other");
        assert!(c.latency.streams > 0 && c.latency.errors == 0, "{row:?}");
        assert!(c.latency.event_p50_ms > 0.0, "{row:?}");
    }
}

#[test]
fn a_compare_gateway_that_does_not_answer_is_reported() {
    let dir = TempDir::new("compare-bad");
    let json = dir.join("bench.json").to_string_lossy().into_owned();
    let fake_port = free_port().expect("a free port");
    let sigorest = stand_in_sigorest(fake_port);

    // A command that exits at once.
    let mut opts = short_run(fake_port, &json, &["-compare-cmd", "false {port}"]);
    opts.gateway = at_url(&sigorest);
    let Err(BenchError::Gateway(e)) = run(&opts, &mut Vec::new()) else {
        panic!("a command that exits is an error");
    };
    assert!(e.contains("false exited at start"), "{e}");

    // Nothing at the URL: the message says where to point the other gateway.
    let nobody = free_port().expect("a free port");
    let url = format!("http://127.0.0.1:{nobody}");
    let mut opts = short_run(fake_port, &json, &["-compare-url", &url]);
    opts.gateway = at_url(&sigorest);
    let Err(BenchError::Gateway(e)) = run(&opts, &mut Vec::new()) else {
        panic!("nothing at the URL is an error");
    };
    assert!(
        e.contains(&format!("http://127.0.0.1:{fake_port}/v1")),
        "{e}"
    );
    assert!(
        !std::path::Path::new(&json).exists(),
        "no report without a run"
    );
}

#[test]
fn rounds_measure_every_level_again_and_report_the_medians() {
    let dir = TempDir::new("rounds");
    let json = dir.join("bench.json").to_string_lossy().into_owned();
    let fake_port = free_port().expect("a free port");
    let sigorest = stand_in_sigorest(fake_port);
    let other = stand_in_sigorest(fake_port);
    let url = format!("http://{}", other.addr);
    let mut opts = short_run(
        fake_port,
        &json,
        &["-rounds", "3", "-no-stream", "-compare-url", &url],
    );
    opts.gateway = at_url(&sigorest);
    let mut out = Vec::new();
    let report = run(&opts, &mut out).expect("the bench runs");
    let tables = String::from_utf8(out).unwrap();

    assert_eq!(report.json.len(), 2);
    for row in &report.json {
        let r = row.rounds.as_ref().expect("three rounds are summed up");
        let (g, c) = (r.gateway_per_s.as_ref(), r.compare_per_s.as_ref());
        assert_eq!(
            (r.direct_per_s.len(), g.map(Vec::len), c.map(Vec::len)),
            (3, Some(3), Some(3)),
            "{r:?}"
        );
        // The row is the median round of each target.
        let mut rates = g.unwrap().clone();
        rates.sort_by(f64::total_cmp);
        assert_eq!(row.gateway.as_ref().unwrap().per_s, rates[1], "{r:?}");
        let mut direct = r.direct_per_s.clone();
        direct.sort_by(f64::total_cmp);
        assert_eq!(row.direct.per_s, direct[1], "{r:?}");
        // The shares and the ratio are the medians of the rounds' own.
        let share = r.gateway_share_of_direct.expect("a share each round");
        assert_eq!(row.gateway_share_of_direct, Some(share.median));
        assert!(share.min <= share.median && share.median <= share.max);
        let per = r.gateway_per_compare.expect("a ratio each round");
        assert_eq!(row.gateway_per_compare, Some(per.median));
        assert_eq!(row.added_p50_ms, r.gateway_added_p50_ms.map(|s| s.median));
        assert_eq!(
            row.compare.as_ref().map(|c| c.added_p50_ms),
            r.compare_added_p50_ms.map(|s| s.median)
        );
        assert_eq!(
            (row.direct.errors, row.gateway.as_ref().unwrap().errors),
            (0, 0)
        );
        let n = row.concurrency;
        assert!(tables.contains(&format!("| {n} | other | ")), "{tables}");
    }
    assert!(
        tables.contains("3 rounds per level, sigorest and other taking turns at going first"),
        "{tables}"
    );
    assert!(
        tables.contains("Requests/s by round, in the order run:"),
        "{tables}"
    );
    let saved = saved(&json);
    assert_eq!(saved["settings"]["rounds"], 3);
    assert_eq!(
        saved["json"][0]["rounds"]["direct_per_s"]
            .as_array()
            .map(Vec::len),
        Some(3)
    );
    assert!(saved["json"][1]["rounds"]["gateway_per_compare"]["median"].is_number());
}

/// What `serve_fake` writes, sent on to the test as it comes.
struct Lines(std::sync::mpsc::Sender<Vec<u8>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.0.send(buf.to_vec());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn serve_fake_serves_the_fake_alone_until_stopped() {
    use std::io::{Read, Write};
    use std::sync::atomic::{AtomicBool, Ordering};

    let port = free_port().expect("a free port");
    let Ok(Command::Run(opts)) =
        parse_args(args(&["-serve-fake", "-fake-port", &port.to_string()]))
    else {
        panic!("-serve-fake should parse");
    };
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    let (tx, rx) = std::sync::mpsc::channel();
    let serving = {
        let stop = stop.clone();
        std::thread::spawn(move || crate::serve_fake(&opts, &mut Lines(tx), &stop))
    };
    let mut said = Vec::new();
    while !said.ends_with(b"\n") {
        let part = rx.recv_timeout(std::time::Duration::from_secs(10));
        said.extend(part.expect("the fake's address, one line"));
    }
    let said = String::from_utf8(said).expect("text");
    assert!(
        said.contains(&format!("http://127.0.0.1:{port}/v1")),
        "{said}"
    );

    let body = crate::body("gpt41", false);
    let mut tcp = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        tcp,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("send");
    let mut answer = String::new();
    tcp.read_to_string(&mut answer).expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.contains(r#""object":"chat.completion""#), "{answer}");

    stop.store(true, Ordering::Relaxed);
    serving.join().expect("no panic").expect("served");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the fake stopped listening"
    );
}

#[test]
fn serve_fake_measures_nothing() {
    for bad in [
        &["-serve-fake", "-direct-only"][..],
        &["-serve-fake", "-compare-cmd", "x {port}"],
    ] {
        assert!(
            matches!(parse_args(args(bad)), Err(BenchError::Usage(_))),
            "{bad:?} should be refused"
        );
    }
}
