//! The bench's own tests (`cargo test` runs them with the binary's unit tests): its flags, and a `-quick` run of its load
//! generator against its in-process fake upstream only (`-direct-only`: no gateway binary
//! needed). No timing assertions: only that everything was measured and nothing failed.

use std::ffi::OsString;

use serde_json::Value;

use crate::{BenchError, Command, parse_args, run};

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
    for bad in [
        &["-levels", "0"][..],
        &["-levels", "1,x"],
        &["-duration", "0"],
        &["-stream-events", "0"],
        &["-bogus"],
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
    let saved: Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(saved["settings"]["levels"], serde_json::json!([1, 3]));
    assert_eq!(saved["json"][1]["concurrency"], 3);
    assert_eq!(
        saved["json"][0]["direct"]["requests"],
        report.json[0].direct.requests
    );
    assert!(saved["stream"][0]["direct"]["event_p99_ms"].is_number());
}
