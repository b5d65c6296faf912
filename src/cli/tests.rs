//! Tests of sigoe's pure parts: flags, prompt assembly, request bodies, gateway URLs, exit
//! statuses, the model table and details.

use super::*;
use crate::cli::models::{from_gateway, price};
use std::ffi::OsString;
use std::path::PathBuf;

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn opts(args: &[&str]) -> Options {
    match parse_args(os(args)) {
        Ok(Command::Run(o)) => *o,
        other => panic!("{args:?}: {other:?}"),
    }
}

fn err(args: &[&str]) -> String {
    match parse_args(os(args)) {
        Err(Error::Usage { message }) => {
            assert!(!message.contains('\n'), "{message}");
            message
        }
        other => panic!("{args:?}: expected a usage error, got {other:?}"),
    }
}

#[test]
fn defaults() {
    let o = opts(&[]);
    assert_eq!(o, Options::default());
    assert_eq!(o.model, "gpt41");
    assert_eq!((o.timeout, o.retries), (None, 3));
    assert_eq!(o.log_level, log::LevelFilter::Warn);
    assert_eq!(o.memory, PathBuf::from("./memory.json"));
    assert_eq!(o.sessions, PathBuf::from("./.sessions"));
    assert!(o.prompt.is_empty() && !o.list && !o.json && !o.stream);
}

#[test]
fn every_flag_in_go_style_and_with_two_dashes() {
    for args in [
        vec![
            "-m", "claude-h", "-s", "notes", "-n", "100", "-T", "0.5", "-t", "20", "-r", "2",
        ],
        vec![
            "--m",
            "claude-h",
            "--s=notes",
            "-n=100",
            "--T",
            "0.5",
            "-t=20",
            "--r=2",
        ],
    ] {
        let o = opts(&args);
        assert_eq!(o.model, "claude-h");
        assert_eq!(o.session.as_deref(), Some("notes"));
        assert_eq!(o.max_tokens, Some(100));
        assert_eq!(o.temperature, Some(0.5));
        assert_eq!(o.timeout, Some(Duration::from_secs(20)));
        assert_eq!(o.retries, 2);
    }
    for args in [
        vec![
            "-server",
            "http://box:9080",
            "-cacert",
            "ca.pem",
            "-memory",
            "m.json",
            "-sessions",
            "s",
        ],
        vec![
            "--server=http://box:9080",
            "--cacert=ca.pem",
            "--memory",
            "m.json",
            "-sessions=s",
        ],
    ] {
        let o = opts(&args);
        assert_eq!(o.server.as_deref(), Some("http://box:9080"));
        assert_eq!(o.cacert, Some(PathBuf::from("ca.pem")));
        assert_eq!(o.memory, PathBuf::from("m.json"));
        assert_eq!(o.sessions, PathBuf::from("s"));
        assert!(o.local_files_given);
    }
    let o = opts(&["-l", "-j", "-q", "-v", "debug"]);
    assert!(o.list && o.json);
    assert_eq!(o.log_level, log::LevelFilter::Error, "-q wins over -v");
    assert_eq!(opts(&["--v=info"]).log_level, log::LevelFilter::Info);
    assert!(opts(&["-stream"]).stream);
    assert!(opts(&["--stream"]).stream);
    assert_eq!(opts(&["-i", "kimi"]).info.as_deref(), Some("kimi"));
    assert_eq!(
        opts(&["-t", "2.5"]).timeout,
        Some(Duration::from_millis(2500))
    );
    assert_eq!(
        opts(&["-T", "-0.5"]).temperature,
        Some(-0.5),
        "a negative number is a value"
    );
    assert_eq!(
        opts(&["-m", "a", "-m", "b"]).model,
        "b",
        "the last one wins"
    );
    assert_eq!(opts(&["-server", ""]).server.as_deref(), Some(""));
}

#[test]
fn help_and_version() {
    assert!(matches!(parse_args(os(&["-h"])), Ok(Command::Help)));
    assert!(matches!(
        parse_args(os(&["-m", "x", "--help"])),
        Ok(Command::Help)
    ));
    assert!(matches!(
        parse_args(os(&["-version"])),
        Ok(Command::Version)
    ));
    // After the flags, "-h" is part of the prompt.
    assert_eq!(opts(&["what", "is", "-h"]).prompt, ["what", "is", "-h"]);
    let u = usage();
    for flag in [
        "-m MODEL",
        "-s SESSION",
        "-n MAX_TOKENS",
        "-T TEMPERATURE",
        "-t TIMEOUT",
        "-r RETRIES",
        "-l ",
        "-i MODEL",
        "-v LEVEL",
        "-j ",
        "-q ",
        "-stream",
        "-server URL",
        "-cacert PATH",
        "-memory PATH",
        "-sessions DIR",
        "SIGOREST_URL",
        "Exit status",
    ] {
        assert!(u.contains(flag), "{flag} missing from the help");
    }
    assert!(
        u.lines().all(|l| l.chars().count() <= 90),
        "help lines stay short"
    );
}

#[test]
fn the_prompt_starts_at_the_first_argument_that_is_not_a_flag() {
    let o = opts(&["-m", "claude-h", "review", "this"]);
    assert_eq!(o.model, "claude-h");
    assert_eq!(o.prompt, ["review", "this"]);
    // Flags inside the prompt are words, as with Go's flag package.
    let o = opts(&["explain", "ls", "-l", "-m", "x"]);
    assert!(!o.list);
    assert_eq!(o.model, "gpt41");
    assert_eq!(o.prompt, ["explain", "ls", "-l", "-m", "x"]);
    // `--` ends the flags; a prompt may then start with a dash.
    let o = opts(&["-m", "kimi", "--", "-x", "means?"]);
    assert_eq!(
        (o.model.as_str(), o.prompt.clone()),
        ("kimi", vec!["-x".to_string(), "means?".to_string()])
    );
    // A lone `-` and negative numbers are words.
    assert_eq!(opts(&["-", "x"]).prompt, ["-", "x"]);
    assert_eq!(opts(&["-1", "is", "odd?"]).prompt, ["-1", "is", "odd?"]);
    // The value of a flag is never the prompt, even when it looks like a word.
    assert_eq!(opts(&["-s", "notes", "hi"]).prompt, ["hi"]);
    assert_eq!(opts(&["-s=notes", "hi"]).prompt, ["hi"]);
}

#[test]
fn split_keeps_values_with_their_flags() {
    let (flags, prompt) = split_prompt(os(&["-server", "http://x", "-q", "hello", "-v", "x"]));
    assert_eq!(flags, os(&["-server", "http://x", "-q"]));
    assert_eq!(prompt, os(&["hello", "-v", "x"]));
    let (flags, prompt) = split_prompt(os(&["-m"]));
    assert_eq!((flags, prompt), (os(&["-m"]), vec![]));
}

#[test]
fn bad_usage_is_one_line_naming_the_flag() {
    let cases: &[(&[&str], &str)] = &[
        (&["-m"], "-m needs a value"),
        (&["-m", "-q"], "-m needs a value (got the flag -q)"),
        (&["-m", ""], "-m needs a value"),
        (&["-s", "../etc"], "-s: invalid session_id"),
        (&["-s", ".hidden"], "-s: invalid session_id"),
        (&["-n", "0"], "-n: '0' is not a whole number"),
        (&["-n", "ten"], "-n: 'ten'"),
        (&["-T", "warm"], "-T: 'warm' is not a number"),
        (&["-T", "NaN"], "-T: 'NaN' is not a number"),
        (&["-t", "0"], "-t: '0' is not a number of seconds"),
        (&["-t", "3601"], "at most 3600"),
        (&["-r", "0"], "-r: '0' is not a whole number from 1 to 10"),
        (&["-r", "11"], "from 1 to 10"),
        (&["-v", "loud"], "-v: 'loud' is not a log level"),
        (&["-x"], "unknown flag -x"),
        (&["-model", "gpt41"], "unknown flag -model"),
        (&["-memory", ""], "-memory: the path is empty"),
        (&["-l", "-i", "kimi"], "-l and -i do not go together"),
        (&["-l", "hello"], "-l takes no prompt"),
        (&["-i", "kimi", "hello"], "-i takes no prompt"),
        (&["-usage", "-l"], "-l and -usage do not go together"),
        (&["-usage", "hello"], "-usage takes no prompt"),
        (&["-j", "-stream"], "does not go with -stream"),
    ];
    for (args, needle) in cases {
        let m = err(args);
        assert!(m.contains(needle), "{args:?}: {m}");
    }
}

#[test]
fn switches_take_a_value_after_equals_as_in_go() {
    for on in ["true", "1", "t", "T", "TRUE", "True"] {
        for dashes in ["-", "--"] {
            let o = opts(&[&format!("{dashes}stream={on}"), "hi"]);
            assert!(o.stream, "{dashes}stream={on}");
            assert_eq!(o.prompt, ["hi"]);
        }
        assert!(opts(&[&format!("-l={on}")]).list);
        assert!(opts(&[&format!("-usage={on}")]).usage);
        assert!(opts(&[&format!("-j={on}"), "hi"]).json);
        let quiet = opts(&[&format!("-q={on}"), "hi"]).log_level;
        assert_eq!(quiet, log::LevelFilter::Error);
    }
    for off in ["false", "0", "f", "F", "FALSE", "False"] {
        let o = opts(&[&format!("-stream={off}"), "hi"]);
        assert!(!o.stream && o.prompt == ["hi"], "-stream={off}: {o:?}");
        assert_eq!(
            opts(&[&format!("-q={off}")]).log_level,
            log::LevelFilter::Warn
        );
    }
    // The last one wins, as in Go; -j=false takes back a -j given earlier.
    assert!(!opts(&["-stream", "-stream=false"]).stream);
    assert!(opts(&["-stream=false", "-stream"]).stream);
    assert!(opts(&["-j=false", "-stream", "hi"]).stream);
    assert!(matches!(
        parse_args(os(&["-version=true"])),
        Ok(Command::Version)
    ));
    assert_eq!(opts(&["-version=false", "hi"]).prompt, ["hi"]);
    // Only after `=`: after a space, the word starts the prompt.
    assert_eq!(opts(&["-stream", "true"]).prompt, ["true"]);
    for bad in ["maybe", "", "yes", "tRuE", "2"] {
        let m = err(&[&format!("-stream={bad}"), "hi"]);
        assert!(
            m.starts_with("-stream: ") && m.contains("not true or false"),
            "{m}"
        );
    }
    assert!(err(&["--q=on"]).starts_with("-q: 'on'"));
    // A value flag keeps its own value, whatever it is.
    assert_eq!(opts(&["-m=true", "hi"]).model, "true");
}

#[test]
fn junk_arguments_never_panic() {
    let junk = [
        "-",
        "--",
        "---",
        "-=",
        "--=x",
        "-m=",
        "=",
        "-\u{7}",
        "-\u{202e}x",
        "--server=\n",
        "-é",
        "-1e999",
        "-.5",
        "-nan",
        "-s=\u{0}",
    ];
    for a in &junk {
        for b in &junk {
            let _ = parse_args(os(&[a, b]));
            let _ = parse_args(os(&["-m", a, b]));
        }
    }
}

#[test]
fn stdin_is_read_without_arguments_or_when_piped() {
    assert!(
        wants_stdin(false, true),
        "no arguments at a terminal: read until EOF"
    );
    assert!(wants_stdin(false, false));
    assert!(wants_stdin(true, false), "arguments and a pipe: both");
    assert!(
        !wants_stdin(true, true),
        "arguments at a terminal: never wait"
    );
}

#[test]
fn prompts_from_arguments_then_stdin() {
    let args = |a: &[&str]| a.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        assemble_prompt(&args(&["review", "this"]), Some("diff --git a b\n+x\n")).as_deref(),
        Some("review this\n\ndiff --git a b\n+x\n")
    );
    assert_eq!(assemble_prompt(&args(&["hi"]), None).as_deref(), Some("hi"));
    assert_eq!(
        assemble_prompt(&args(&["hi"]), Some(" \n\n")).as_deref(),
        Some("hi"),
        "blank stdin is none"
    );
    assert_eq!(
        assemble_prompt(&[], Some("from stdin\n")).as_deref(),
        Some("from stdin\n")
    );
    assert_eq!(assemble_prompt(&[], Some("\n")), None);
    assert_eq!(assemble_prompt(&[], None), None);
    assert_eq!(assemble_prompt(&args(&["", " "]), None), None);
}

#[test]
fn request_bodies_carry_what_was_given() {
    let o = opts(&[
        "-m", "claude-h", "-s", "s1", "-n", "50", "-T", "0.2", "-t", "30", "-r", "2",
    ]);
    let b = request_body(&o, "q", true);
    assert_eq!(
        b,
        json!({"model": "claude-h", "messages": [{"role": "user", "content": "q"}],
            "max_tokens": 50, "temperature": 0.2, "session_id": "s1", "timeout": 30.0,
            "retries": 2, "stream": true})
    );
    let plain = request_body(&Options::default(), "q", false);
    // Without -t no timeout goes: a gateway applies its own (ours could pass its maximum).
    for k in [
        "max_tokens",
        "temperature",
        "session_id",
        "timeout",
        "stream",
    ] {
        assert!(plain.get(k).is_none(), "{k}");
    }
    let req = ChatRequest::parse(plain.to_string().as_bytes(), MAX_TIMEOUT).unwrap();
    assert_eq!(req.timeout, DEFAULT_TIMEOUT, "direct mode waits as before");
    // What sigoe builds, the server's parser takes.
    let req = ChatRequest::parse(b.to_string().as_bytes(), MAX_TIMEOUT).unwrap();
    assert_eq!(
        (req.session_id.as_deref(), req.retries, req.stream),
        (Some("s1"), 2, true)
    );
    assert_eq!(req.timeout, Duration::from_secs(30));
}

#[test]
fn gateway_urls() {
    for (given, base) in [
        ("http://127.0.0.1:9080", "http://127.0.0.1:9080"),
        ("http://127.0.0.1:9080/", "http://127.0.0.1:9080"),
        ("https://box:9443/v1", "https://box:9443"),
        ("https://box:9443/v1/", "https://box:9443"),
        (" HTTPS://[::1]:9443 ", "HTTPS://[::1]:9443"),
    ] {
        let g = Gateway::parse(given).unwrap();
        assert_eq!(g.base, base, "{given}");
        assert_eq!(
            g.url("/v1/chat/completions"),
            format!("{base}/v1/chat/completions")
        );
    }
    assert!(Gateway::parse("https://box").unwrap().is_https());
    assert!(!Gateway::parse("http://box").unwrap().is_https());
    assert!(
        Gateway::parse("box:9080")
            .unwrap_err()
            .contains("not an http")
    );
    assert!(Gateway::parse("ftp://box").is_err());
    assert!(
        Gateway::parse("http://127.0.0.1:99999")
            .unwrap_err()
            .contains("invalid port '99999'")
    );
    assert!(Gateway::parse("http://[::1/").is_err());
    assert!(Gateway::parse("http://").unwrap_err().contains("no host"));
    assert!(Gateway::parse("http:///v1").is_err());
    // A path is glued before sigoe's own paths: only / and /v1 mean the gateway itself.
    for path in [
        "/claude-h",
        "/claude-h/v1",
        "/api",
        "/v1/chat/completions",
        "/v1/v1",
        "//",
        "/v1//",
        "/V1",
    ] {
        let url = format!("http://127.0.0.1:9080{path}");
        let e = Gateway::parse(&url).unwrap_err();
        assert!(
            e.contains("has a path") && e.contains("/v1") && !e.contains("  "),
            "{url}: {e}"
        );
    }
    assert!(
        Gateway::parse("http://127.0.0.1:9080")
            .unwrap()
            .target("/x")
            .is_direct()
    );
    assert!(
        !Gateway::parse("http://192.168.1.2:9080")
            .unwrap()
            .target("/x")
            .is_direct()
    );
}

#[test]
fn gateway_urls_with_a_query_a_fragment_or_credentials_are_refused() {
    for url in [
        "http://127.0.0.1:9080?x=1",
        "http://127.0.0.1:9080/?x=1",
        "http://127.0.0.1:9080/v1?",
        "https://box:9443#frag",
        "http://box/#",
    ] {
        let m = Gateway::parse(url).unwrap_err();
        assert!(m.contains("the gateway's address only"), "{url}: {m}");
        assert!(m.contains("query") || m.contains("fragment"), "{url}: {m}");
    }
    for (url, shown) in [
        (
            "http://user:s3cret@127.0.0.1:9080",
            "'http://***@127.0.0.1:9080'",
        ),
        ("http://s3cret@box", "'http://***@box'"),
        (
            "https://u:s3cret/x?y#z@box:9443/v1",
            "'https://***@box:9443/v1'",
        ),
        ("ftp://u:s3cret@box", "'ftp://***@box'"),
        ("u:s3cret@box:9080", "'***@box:9080'"),
        ("u:s3cret@box://x", "'***@box://x'"),
    ] {
        let m = Gateway::parse(url).unwrap_err();
        assert!(!m.contains("s3cret"), "{url}: {m}");
        assert!(m.contains(shown), "{url}: {m}");
        assert!(m.contains("SIGOREST_API_KEY"), "{url}: {m}");
    }
}

#[test]
fn stdout_shows_control_characters_only_on_a_terminal() {
    let answer = "title\x1b]0;pwned\x07 clip\x1b]52;c;eA==\x07 \x1b[31mred\x1b[0m\u{9b}2J\n";
    assert!(matches!(
        for_stdout(answer.as_bytes(), false, false),
        Cow::Borrowed(b) if b == answer.as_bytes()
    ));
    assert_eq!(
        for_stdout(answer.as_bytes(), true, false).as_ref(),
        b"title^[]0;pwned^G clip^[]52;c;eA==^G ^[[31mred^[[0mM-^[2J\n"
    );
    assert!(matches!(
        for_stdout(b"plain\n", true, false),
        Cow::Borrowed(_)
    ));
    // Bytes that are not UTF-8: as they are into a pipe; U+FFFD on a terminal, where a lone
    // 0x9b byte is a CSI to a terminal that does not speak UTF-8.
    assert_eq!(for_stdout(b"a\x9bb", false, false).as_ref(), b"a\x9bb");
    assert_eq!(
        for_stdout(b"a\x9bb", true, false).as_ref(),
        "a\u{fffd}b".as_bytes()
    );
    // -j: JSON escapes C0 controls already; a raw C1 control, which JSON allows in a
    // string, is escaped as well, and the JSON means the same.
    let json = "{\"content\":\"\\u001b]0;t\\u0007 \u{9d}0;t\u{9c}\"}\n";
    let shown = for_stdout(json.as_bytes(), true, true);
    assert_eq!(
        shown.as_ref(),
        br#"{"content":"\u001b]0;t\u0007 \u009d0;t\u009c"}
"#
    );
    let v: Value = serde_json::from_slice(&shown).unwrap();
    assert_eq!(v["content"], "\x1b]0;t\x07 \u{9d}0;t\u{9c}");
    assert!(matches!(
        for_stdout(json.as_bytes(), false, true),
        Cow::Borrowed(_)
    ));
}

#[test]
fn exit_statuses_and_reasons() {
    let usage = Stop::Usage(Error::Usage {
        message: "bad".into(),
    });
    assert_eq!(usage.exit_status(), 2);
    let unknown = Stop::Usage(unknown_model("gpt-99", false));
    assert_eq!(unknown.exit_status(), 2);
    assert!(
        unknown.reason().contains("sigoe -l"),
        "{}",
        unknown.reason()
    );
    assert!(
        unknown_model("ollama-qwen3", false)
            .to_string()
            .contains("use -server")
    );
    assert!(
        unknown_model("x", true)
            .to_string()
            .contains("gateway does not offer")
    );
    let key = Stop::Failed(Error::ProviderNotConfigured {
        env: "MAMMOUTH_API_KEY",
    });
    assert_eq!(key.exit_status(), 1);
    assert_eq!(
        key.reason(),
        "provider not configured: set MAMMOUTH_API_KEY, or use -server URL"
    );
    let multi = Stop::Failed(Error::Upstream {
        message: "line\nbreak\r".into(),
    });
    assert!(!multi.reason().contains(['\n', '\r']));
}

#[test]
fn gateway_failures_speak_of_the_gateway() {
    let g = Gateway::parse("http://127.0.0.1:9").unwrap();
    let stop = gateway_failure(Failure::Connect("refused".into()), &g);
    assert_eq!(stop.exit_status(), 1);
    assert!(
        stop.reason()
            .contains("cannot reach the gateway at http://127.0.0.1:9"),
        "{}",
        stop.reason()
    );
    let body = br#"{"error":{"message":"upstream error: gpt41: provider answered 500: boom","type":"server_error","param":null,"code":"upstream_error"}}"#;
    let stop = gateway_failure(
        Failure::Status {
            status: 502,
            retry_after: None,
            body: body.to_vec(),
        },
        &g,
    );
    assert_eq!(stop.exit_status(), 1);
    assert_eq!(
        stop.reason(),
        "the gateway answered 502: upstream error: gpt41: provider answered 500: boom"
    );
    let body = br#"{"error":{"message":"model 'nope' not found","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#;
    let stop = gateway_failure(
        Failure::Status {
            status: 404,
            retry_after: None,
            body: body.to_vec(),
        },
        &g,
    );
    assert_eq!(
        stop.exit_status(),
        2,
        "an unknown model is bad usage in both modes"
    );
    let stop = gateway_failure(
        Failure::Status {
            status: 500,
            retry_after: None,
            body: b"<html>".to_vec(),
        },
        &g,
    );
    assert!(stop.reason().contains("<html>"));
}

fn model(short: &str) -> Model {
    Catalog::embedded().get(short).unwrap().clone()
}

#[test]
fn prices_show_what_they_have() {
    assert_eq!(price(2.0), "2.00");
    assert_eq!(price(0.025), "0.025");
    assert_eq!(price(1.25), "1.25");
    assert_eq!(price(0.3), "0.30");
    assert_eq!(price(75.0), "75.00");
    assert_eq!(price(0.0), "0.00");
}

#[test]
fn the_model_table_is_aligned() {
    let rows = vec![
        (model("gpt41"), KeyState::Set),
        (model("moon-128k"), KeyState::Missing),
        (model("claude-opus"), KeyState::Missing),
    ];
    let t = table(&rows);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 4);
    assert_eq!(
        lines[0],
        "MODEL        ID                PROVIDER  CONTEXT  OUTPUT  $IN/M  $OUT/M  KEY"
    );
    assert_eq!(
        lines[1],
        "gpt41        gpt-4.1           mammouth   128000    8192   2.00    8.00  set"
    );
    assert_eq!(
        lines[2],
        "moon-128k    moonshot-v1-128k  moonshot   128000    4096  0.025   0.075  missing"
    );
    assert_eq!(
        lines[3],
        "claude-opus  claude-opus-4-5   mammouth   200000    8192  15.00   75.00  missing"
    );
    // Every column starts at the same place on every line.
    for (line, provider) in lines
        .iter()
        .zip(["PROVIDER", "mammouth", "moonshot", "mammouth"])
    {
        assert_eq!(&line[31..39], provider, "{line}");
    }
    assert!(t.lines().all(|l| !l.ends_with(' ')));
}

#[test]
fn the_whole_catalog_fits_the_table() {
    let env = Env::from_pairs([("MOONSHOT_API_KEY", "k")]);
    let all = catalog_models(&env);
    let t = table(&all);
    assert_eq!(t.lines().count(), all.len() + 1);
    let kimi = t.lines().find(|l| l.starts_with("kimi ")).unwrap();
    assert!(kimi.ends_with("set"), "{kimi}");
    let gpt = t.lines().find(|l| l.starts_with("gpt41 ")).unwrap();
    assert!(gpt.ends_with("missing"), "{gpt}");
}

#[test]
fn one_model_in_detail() {
    let d = detail(
        &model("gpt5m"),
        KeyState::Missing,
        "https://api.mammouth.ai/v1/chat/completions",
    );
    let expected = "\
model        gpt5m
id           gpt-5-mini
provider     mammouth
endpoint     https://api.mammouth.ai/v1/chat/completions
key          MAMMOUTH_API_KEY (missing)
context      128000 tokens
max output   4096 tokens, sent as max_completion_tokens
price        $0.25 in, $2.00 out per million tokens
";
    assert!(d.starts_with(expected), "{d}");
    assert!(d.contains("temperature  "), "{d}");
    let d = detail(&model("claude-h"), KeyState::Set, "x");
    assert!(d.contains("MAMMOUTH_API_KEY (set)") && d.contains("sent as max_tokens"));
    assert!(d.contains("temperature  0 to 1 (clamped)"), "{d}");
}

#[test]
fn the_model_list_of_a_gateway() {
    let body = json!({"object": "list", "data": [
        {"short": "gpt41", "id": "gpt-4.1", "provider": "mammouth", "context_tokens": 128000,
         "max_output_tokens": 8192, "input_price_per_million": 2.0, "output_price_per_million": 8.0,
         "temperature": {"min": 0.0, "max": 2.0}, "uses_max_completion_tokens": false,
         "key_env": "MAMMOUTH_API_KEY", "key_set": true},
        {"short": "ollama-qwen3", "id": "qwen3:latest", "provider": "ollama", "context_tokens": 0,
         "max_output_tokens": 0, "input_price_per_million": 0.0, "output_price_per_million": 0.0,
         "temperature": {"min": 0.0, "max": 0.0}, "key_env": null, "key_set": true},
        {"short": "x", "id": "y", "provider": "martian"},
        {"id": "no-short"}
    ]});
    let models = from_gateway(body.to_string().as_bytes()).unwrap();
    assert_eq!(models.len(), 2);
    assert_eq!(models[0], (model("gpt41"), KeyState::Set));
    assert_eq!(models[1].1, KeyState::NotNeeded);
    let t = table(&models);
    assert!(
        t.contains("ollama-qwen3  qwen3:latest  ollama          -       -   0.00    0.00  -"),
        "{t}"
    );
    assert!(from_gateway(b"nope").unwrap_err().contains("not JSON"));
    assert!(from_gateway(b"{}").unwrap_err().contains("data"));
    assert!(find_model(&models, "GPT-4.1", true).is_ok());
    assert_eq!(
        find_model(&models, "kimi", true).unwrap_err().exit_status(),
        2
    );
}

#[test]
fn newkey_takes_a_name_and_nothing_else() {
    assert_eq!(
        opts(&["-newkey", "laptop-ana"]).newkey.as_deref(),
        Some("laptop-ana")
    );
    assert_eq!(
        opts(&["--newkey=ci.bot@lab"]).newkey.as_deref(),
        Some("ci.bot@lab")
    );
    // The value is taken with its flag: `ana` is not the prompt.
    assert!(opts(&["-newkey", "ana", "-q"]).prompt.is_empty());
    for (args, needle) in [
        (&["-newkey", "two words"][..], "key name"),
        (&["-newkey", ""], "key name"),
        (&["-newkey"], "needs a value"),
        (&["-newkey", "ana", "hello"], "-newkey takes no prompt"),
        (&["-newkey", "ana", "-l"], "does not go with"),
        (&["-newkey", "ana", "-i", "gpt41"], "does not go with"),
    ] {
        let m = err(args);
        assert!(m.contains(needle), "{args:?}: {m}");
    }
    let u = usage();
    assert!(u.contains("-newkey NAME") && u.contains(KEY_ENV), "{u}");
}

#[test]
fn the_gateway_key_goes_in_the_target_and_never_in_debug() {
    let g = Gateway::parse("http://127.0.0.1:9080")
        .unwrap()
        .with_key(Some(" sk-sigo-abc "))
        .unwrap();
    assert_eq!(g.target("/v1/models").key(), Some("sk-sigo-abc"));
    assert!(!format!("{g:?}").contains("sk-sigo-abc"), "{g:?}");
    let none = Gateway::parse("http://127.0.0.1:9080")
        .unwrap()
        .with_key(Some(""))
        .unwrap();
    assert!(none.target("/x").key().is_none());
}

#[test]
fn usage_is_a_switch_that_goes_with_j_and_server() {
    let o = opts(&["-usage"]);
    assert!(o.usage && !o.list);
    let o = opts(&["--usage", "-j", "-server", "http://gw:9080"]);
    assert!(o.usage && o.json);
    assert!(!opts(&[]).usage);
}

#[test]
fn a_gateway_key_is_trimmed_and_may_hold_no_control_character() {
    let g = || Gateway::parse("http://box:9080").unwrap();
    for (given, key) in [
        (Some("sk-1\r\n"), Some("sk-1")),
        (Some(" sk-1 "), Some("sk-1")),
        (Some(" \r\n"), None),
        (None, None),
    ] {
        let with = g().with_key(given).unwrap();
        assert_eq!(with.key.as_deref(), key, "{given:?}");
    }
    for given in ["sk-1\r\nX-Evil: 1", "sk\u{0}1", "sk\t1"] {
        let e = g().with_key(Some(given)).unwrap_err();
        assert!(e.contains("control character") && !e.contains("sk"), "{e}");
    }
}

#[test]
fn stdin_is_read_up_to_the_gateways_body_limit() {
    assert_eq!(
        MAX_STDIN_BYTES,
        crate::http::Limits::default().body_bytes as u64
    );
    assert_eq!(read_limited(&b"abc"[..], 3).unwrap(), b"abc");
    // An endless stdin is refused after limit + 1 bytes.
    let stop = read_limited(std::io::repeat(b'y'), 1024 * 1024).unwrap_err();
    assert_eq!(stop.exit_status(), 2);
    assert!(stop.reason().contains("over 1 MiB"), "{}", stop.reason());
}

#[test]
fn a_tls_failure_says_what_to_do_about_it() {
    let unknown = "invalid peer certificate: UnknownIssuer";
    assert!(super::tls_hint(unknown).contains("-cacert PATH"));
    let name = "invalid peer certificate: certificate not valid for name \"192.168.1.10\"; \
                certificate is only valid for DnsName(\"localhost\")";
    let hint = super::tls_hint(name);
    assert!(
        hint.contains("-cert-hosts") && !hint.contains("-cacert PATH"),
        "{hint}"
    );
    assert!(super::tls_hint("invalid peer certificate: Expired").contains("current"));
    assert_eq!(super::tls_hint("connection refused"), "");
}
