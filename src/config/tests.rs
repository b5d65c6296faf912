//! Tests of the command line: every flag in every form, bad values, junk.

use super::*;

fn os(args: &[&str]) -> Vec<OsString> {
    args.iter().map(OsString::from).collect()
}

fn run(args: &[&str]) -> Config {
    match parse_args(os(args)) {
        Ok(Command::Run(c)) => *c,
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

/// `-flag v`, `-flag=v`, `--flag v`, `--flag=v`.
fn forms(flag: &str, value: &str) -> Vec<Vec<String>> {
    vec![
        vec![format!("-{flag}"), value.to_string()],
        vec![format!("-{flag}={value}")],
        vec![format!("--{flag}"), value.to_string()],
        vec![format!("--{flag}={value}")],
    ]
}

fn run_forms(flag: &str, value: &str, check: impl Fn(&Config)) {
    for args in forms(flag, value) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        check(&run(&args));
    }
}

fn err_forms(flag: &str, value: &str, expect: &str) {
    for args in forms(flag, value) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let m = err(&args);
        assert!(m.contains(expect), "{args:?}: {m}");
        assert!(m.starts_with(&format!("-{flag}")), "{args:?}: {m}");
    }
}

#[test]
fn defaults() {
    let c = run(&[]);
    assert_eq!((c.http_port, c.https_port), (9080, 9443));
    assert_eq!(c.cert, PathBuf::from("./certs/server.crt"));
    assert_eq!(c.key, PathBuf::from("./certs/server.key"));
    assert!(c.cert_hosts.is_empty());
    assert_eq!(c.http_allow.to_string(), "127.0.0.0/8,::1/128");
    assert_eq!(c.https_allow.to_string(), "192.168.0.0/16,10.0.0.0/8");
    assert_eq!(c.admin_allow.to_string(), "127.0.0.0/8,::1/128");
    assert_eq!(c.models, PathBuf::from("./models.csv"));
    assert_eq!(c.memory, PathBuf::from("./memory.json"));
    assert_eq!(c.sessions, PathBuf::from("./.sessions"));
    assert_eq!((c.workers, c.queue), (100, 1024));
    assert_eq!(c.log_level, log::LevelFilter::Info);
    assert!(!c.json_log);
    assert_eq!(c.shutdown_grace, Duration::from_secs(30));
    assert_eq!(c.bind, "::".parse::<IpAddr>().unwrap());
    assert_eq!(c.max_timeout, Duration::from_secs(600));
    assert_eq!(c.max_conns_per_ip, 64);
    assert_eq!(c.max_body_total, 256 << 20);
    // Every default list parsed (an empty one would mean a typo in a constant).
    let d = Config::default();
    assert!(!d.http_allow.is_empty() && !d.https_allow.is_empty());
    assert!(!d.admin_allow.is_empty());
}

#[test]
fn every_value_flag_in_every_form() {
    run_forms("http-port", "8080", |c| assert_eq!(c.http_port, 8080));
    run_forms("http-port", "0", |c| assert_eq!(c.http_port, 0));
    run_forms("https-port", "65535", |c| assert_eq!(c.https_port, 65535));
    run_forms("cert", "/etc/s/a.crt", |c| {
        assert_eq!(c.cert, PathBuf::from("/etc/s/a.crt"))
    });
    run_forms("key", "k.pem", |c| {
        assert_eq!(c.key, PathBuf::from("k.pem"))
    });
    run_forms("cert-hosts", " gw.lan, ,192.168.1.5,", |c| {
        assert_eq!(c.cert_hosts, vec!["gw.lan", "192.168.1.5"])
    });
    run_forms("http-allow", "10.0.0.0/8, ::1", |c| {
        assert_eq!(c.http_allow.to_string(), "10.0.0.0/8,::1/128")
    });
    run_forms("https-allow", "0.0.0.0/0", |c| {
        assert!(c.https_allow.allows("8.8.8.8".parse().unwrap()))
    });
    run_forms("admin-allow", "192.168.1.10", |c| {
        assert_eq!(c.admin_allow.to_string(), "192.168.1.10/32")
    });
    run_forms("models", "m.csv", |c| {
        assert_eq!(c.models, PathBuf::from("m.csv"))
    });
    run_forms("memory", "/var/lib/s/mem.json", |c| {
        assert_eq!(c.memory, PathBuf::from("/var/lib/s/mem.json"))
    });
    run_forms("sessions", "/tmp/s", |c| {
        assert_eq!(c.sessions, PathBuf::from("/tmp/s"))
    });
    run_forms("workers", "1", |c| assert_eq!(c.workers, 1));
    run_forms("workers", "10000", |c| assert_eq!(c.workers, 10_000));
    run_forms("queue", "16384", |c| assert_eq!(c.queue, 16_384));
    run_forms("v", "DEBUG", |c| {
        assert_eq!(c.log_level, log::LevelFilter::Debug)
    });
    run_forms("v", "warn", |c| {
        assert_eq!(c.log_level, log::LevelFilter::Warn)
    });
    run_forms("v", "error", |c| {
        assert_eq!(c.log_level, log::LevelFilter::Error)
    });
    run_forms("v", "trace", |c| {
        assert_eq!(c.log_level, log::LevelFilter::Trace)
    });
    run_forms("shutdown-grace", "0", |c| {
        assert_eq!(c.shutdown_grace, Duration::ZERO)
    });
    run_forms("shutdown-grace", "3600", |c| {
        assert_eq!(c.shutdown_grace, Duration::from_secs(3600))
    });
    run_forms("max-timeout", "30", |c| {
        assert_eq!(c.max_timeout, Duration::from_secs(30))
    });
    run_forms("stream-keepalive", "0", |c| {
        assert_eq!(c.stream_keepalive, Duration::ZERO)
    });
    run_forms("stream-keepalive", "5", |c| {
        assert_eq!(c.stream_keepalive, Duration::from_secs(5))
    });
    run_forms("max-conns-per-ip", "0", |c| {
        assert_eq!(c.max_conns_per_ip, 0)
    });
    run_forms("max-conns-per-ip", "8", |c| {
        assert_eq!(c.max_conns_per_ip, 8)
    });
    run_forms("max-body-total", "64", |c| {
        assert_eq!(c.max_body_total, 64 << 20)
    });
    run_forms("bind", "127.0.0.1", |c| {
        assert_eq!(c.bind, "127.0.0.1".parse::<IpAddr>().unwrap())
    });
    run_forms("bind", "[::1]", |c| {
        assert_eq!(c.bind, "::1".parse::<IpAddr>().unwrap())
    });
}

#[test]
fn switches_in_both_forms() {
    for q in ["-q", "--q"] {
        assert_eq!(run(&[q]).log_level, log::LevelFilter::Error);
    }
    for j in ["-j", "--j"] {
        assert!(run(&[j]).json_log);
    }
    let c = run(&["-q", "-j", "-http-port", "1"]);
    assert!(c.json_log);
    assert_eq!((c.log_level, c.http_port), (log::LevelFilter::Error, 1));
}

#[test]
fn quiet_wins_over_level() {
    assert_eq!(
        run(&["-v", "debug", "-q"]).log_level,
        log::LevelFilter::Error
    );
    assert_eq!(
        run(&["-q", "-v", "debug"]).log_level,
        log::LevelFilter::Error
    );
}

#[test]
fn many_flags_together() {
    let c = run(&[
        "-http-port=0",
        "--https-port",
        "8443",
        "-cert",
        "c.pem",
        "-key=k.pem",
        "-workers",
        "4",
        "-queue=8",
        "-j",
        "-v",
        "warn",
        "-bind",
        "0.0.0.0",
    ]);
    assert_eq!((c.http_port, c.https_port), (0, 8443));
    assert_eq!((c.workers, c.queue), (4, 8));
    assert_eq!(c.cert, PathBuf::from("c.pem"));
    assert_eq!(c.key, PathBuf::from("k.pem"));
    assert!(c.json_log);
    assert_eq!(c.log_level, log::LevelFilter::Warn);
    assert_eq!(c.bind, "0.0.0.0".parse::<IpAddr>().unwrap());
}

#[test]
fn both_listeners_off_is_refused() {
    // It would start, log `http=off https=off` and serve nothing, forever.
    let m = err(&["-http-port", "0", "-https-port", "0"]);
    assert!(m.contains("nothing to serve"), "{m}");
    assert_eq!(run(&["-https-port", "0"]).http_port, 9080);
}

#[test]
fn repeated_flag_takes_the_last_value() {
    assert_eq!(run(&["-workers", "2", "--workers=3"]).workers, 3);
    assert!(run(&["-j", "-j"]).json_log);
}

#[test]
fn bad_values_name_the_flag() {
    err_forms("http-port", "abc", "'abc' is not a port number (0-65535)");
    err_forms("http-port", "65536", "not a port number");
    err_forms("https-port", "-1", "'-1' is not a port number");
    err_forms("https-port", "1.5", "not a port number");
    err_forms("cert", "", "empty");
    err_forms("key", "", "empty");
    err_forms("models", "", "empty");
    err_forms("memory", "", "empty");
    err_forms("sessions", "", "empty");
    err_forms(
        "cert-hosts",
        "gw.lan,a b",
        "'a b' is not a host name or IP address",
    );
    err_forms(
        "cert-hosts",
        "gw.lan,192.168.001.005",
        "-cert-hosts: '192.168.001.005' has leading zeros, which some tools read as octal; \
         write 192.168.1.5",
    );
    err_forms("cert-hosts", "10.0.0", "'10.0.0' is not an IPv4 address");
    err_forms(
        "bind",
        "127.000.0.1",
        "-bind: '127.000.0.1' has leading zeros",
    );
    err_forms("http-allow", "10.0.0.0/33", "prefix length");
    err_forms("http-allow", "", "empty");
    err_forms("https-allow", "nope", "not an IP address or CIDR block");
    err_forms("https-allow", " , ", "empty");
    err_forms(
        "admin-allow",
        "1.2.3",
        "'1.2.3' is not an IPv4 address: write four numbers",
    );
    err_forms("workers", "0", "'0' is not a whole number from 1 to 10000");
    err_forms("workers", "10001", "from 1 to 10000");
    err_forms("workers", "many", "from 1 to 10000");
    err_forms("queue", "0", "from 1 to 16384");
    // Preallocated at start: a million places would be hundreds of MB.
    err_forms("queue", "16385", "from 1 to 16384");
    err_forms("queue", "1000000", "from 1 to 16384");
    err_forms("queue", "99999999999999999999999", "from 1 to 16384");
    err_forms(
        "v",
        "loud",
        "'loud' is not a log level (debug, info, warn, error)",
    );
    err_forms("shutdown-grace", "3601", "from 0 to 3600");
    err_forms("shutdown-grace", "-5", "from 0 to 3600");
    err_forms("max-timeout", "0", "from 1 to 86400");
    err_forms("max-timeout", "86401", "from 1 to 86400");
    err_forms("stream-keepalive", "3601", "from 0 to 3600");
    err_forms("max-conns-per-ip", "-1", "from 0 to 1000000");
    err_forms("max-body-total", "0", "from 1 to 1048576");
    err_forms("bind", "localhost", "not an IP address");
    err_forms("bind", "10.0.0.0/8", "not an IP address");
}

#[test]
fn empty_admin_list_means_nobody() {
    let c = run(&["-admin-allow="]);
    assert!(c.admin_allow.is_empty());
}

#[test]
fn missing_values() {
    for flag in [
        "-http-port",
        "-https-port",
        "-cert",
        "-key",
        "-cert-hosts",
        "-http-allow",
        "-https-allow",
        "-admin-allow",
        "-models",
        "-memory",
        "-sessions",
        "-keys",
        "-ip-rate",
        "-ip-burst",
        "-workers",
        "-queue",
        "-v",
        "-shutdown-grace",
        "-bind",
    ] {
        assert_eq!(err(&[flag]), format!("{flag} needs a value"));
        let long = format!("-{flag}");
        assert_eq!(err(&[&long]), format!("{flag} needs a value"));
        // Followed by another flag: refused, not taken as the value.
        let m = err(&[flag, "-j"]);
        assert!(m.starts_with(&format!("{flag} needs a value")), "{m}");
    }
}

#[test]
fn flag_is_not_taken_as_a_value() {
    assert_eq!(err(&["-v", "-q"]), "-v needs a value (got the flag -q)");
    assert_eq!(
        err(&["-cert", "-key", "k.pem"]),
        "-cert needs a value (got the flag -key)"
    );
    assert_eq!(
        err(&["-models", "--memory=x"]),
        "-models needs a value (got the flag -memory)"
    );
    // A lone dash and a negative number are values.
    assert_eq!(run(&["-models", "-"]).models, PathBuf::from("-"));
    assert!(err(&["-http-port", "-5"]).contains("'-5' is not a port number"));
}

#[test]
fn unknown_flags_and_stray_arguments() {
    assert_eq!(err(&["-foo"]), "unknown flag -foo (see -h)");
    assert_eq!(err(&["--foo=1"]), "unknown flag -foo (see -h)");
    assert_eq!(err(&["-x"]), "unknown flag -x (see -h)");
    assert_eq!(err(&["---x"]), "unknown flag ---x (see -h)");
    assert_eq!(err(&["serve"]), "unexpected argument 'serve' (see -h)");
    assert_eq!(
        err(&["-q", "debug"]),
        "unexpected argument 'debug' (see -h)"
    );
    assert_eq!(
        err(&["-j", "false"]),
        "unexpected argument 'false' (see -h)"
    );
    assert_eq!(err(&["--"]), "unexpected argument '--' (see -h)");
    assert_eq!(
        err(&["-http-port", "1", "--", "-j"]),
        "unexpected argument '--' (see -h)"
    );
    // Control characters never break the one-line message.
    let m = err(&["bad\nvalue"]);
    assert_eq!(m, "unexpected argument 'bad\\nvalue' (see -h)");
    let m = err(&["-workers", "1\n2"]);
    assert!(m.contains("'1\\n2'"), "{m}");
    // Very long junk is cut.
    let long = "z".repeat(500);
    assert!(err(&[&long]).len() < 120);
}

#[test]
fn help_and_version() {
    for h in ["-h", "--h", "-help", "--help", "-help=1"] {
        assert!(matches!(parse_args(os(&[h])), Ok(Command::Help)), "{h}");
    }
    for v in ["-version", "--version"] {
        assert!(matches!(parse_args(os(&[v])), Ok(Command::Version)), "{v}");
    }
    // Help wins over errors elsewhere on the line.
    assert!(matches!(
        parse_args(os(&["-http-port", "abc", "-h"])),
        Ok(Command::Help)
    ));
    // After `--` it is not help.
    assert!(parse_args(os(&["--", "-h"])).is_err());
}

#[test]
fn usage_names_every_flag_variable_and_file() {
    let u = usage();
    // Every flag indented as the others (a string continuation once ate three indents).
    let flush: Vec<&str> = u.lines().filter(|l| l.starts_with('-')).collect();
    assert!(flush.is_empty(), "{flush:?}");
    for word in [
        "-http-port",
        "-https-port",
        "-bind",
        "listen address",
        "-cert ",
        "-key ",
        "-cert-hosts",
        "-http-allow",
        "-https-allow",
        "-admin-allow",
        "-models",
        "-memory",
        "-sessions",
        "-keys PATH",
        "./keys.csv",
        "keys.csv ",
        "sigoe -newkey",
        "-ip-rate N",
        "-ip-burst N",
        "-workers",
        "-queue",
        "-shutdown-grace",
        "-llama-server",
        "-llama-model",
        "-llama-args",
        "-llama-name",
        "-llama-port",
        "-llama-parallel",
        "-llama-queue-wait",
        "-v LEVEL",
        "-q",
        "-j",
        "-version",
        "-help",
        "9080",
        "9443",
        "./certs/server.crt",
        "./certs/server.key",
        "127.0.0.0/8,::1/128",
        "192.168.0.0/16,10.0.0.0/8",
        "./models.csv",
        "./memory.json",
        "./.sessions",
        "MAMMOUTH_API_KEY",
        "MOONSHOT_API_KEY",
        "ZAI_API_KEY",
        "MAMMOUTH_BASE_URL",
        "MOONSHOT_BASE_URL",
        "ZAI_BASE_URL",
        "OLLAMA_HOST",
        "https://api.mammouth.ai/v1",
        "https://api.moonshot.ai/v1",
        "https://api.z.ai/api/paas/v4",
        "http://localhost:11434",
    ] {
        assert!(u.contains(word), "usage lacks {word:?}");
    }
    for line in u.lines() {
        assert!(line.chars().count() <= 80, "long line in usage: {line}");
    }
}

#[test]
fn switches_take_a_value_after_equals_as_in_go() {
    for on in ["true", "1", "t", "TRUE", "True"] {
        let c = run(&[&format!("-q={on}"), &format!("--j={on}")]);
        assert_eq!(c.log_level, log::LevelFilter::Error);
        assert!(c.json_log);
    }
    for off in ["false", "0", "f", "FALSE", "False"] {
        let c = run(&[&format!("-q={off}"), &format!("-j={off}")]);
        assert_eq!(c.log_level, log::LevelFilter::Info);
        assert!(!c.json_log);
    }
    assert!(!run(&["-j", "-j=false"]).json_log, "the last one wins");
    assert!(run(&["-j=false", "-j"]).json_log);
    assert!(matches!(
        parse_args(os(&["-version=true"])),
        Ok(Command::Version)
    ));
    let m = err(&["-q=maybe"]);
    assert!(m.starts_with("-q: 'maybe' is not true or false"), "{m}");
    // After a space the value is an argument of its own, as in Go.
    assert!(err(&["-q", "true"]).contains("unexpected argument 'true'"));
    // The value of -llama-args is passed on untouched, even when it reads as a switch.
    let c = run(&[
        "-llama-server",
        "x",
        "-llama-model",
        "m.gguf",
        "-llama-args",
        "-j=false",
    ]);
    assert_eq!(c.llama.map(|l| l.args), Some(vec!["-j=false".to_string()]));
    assert!(!c.json_log);
}

#[test]
fn go_style_rewrites() {
    let cases: &[(&[&str], &[&str])] = &[
        (&["-http-port", "1"], &["--http-port", "1"]),
        (&["-http-port=1"], &["--http-port", "1"]),
        (&["--http-port=1"], &["--http-port", "1"]),
        (&["--http-port", "1"], &["--http-port", "1"]),
        (&["-cert-hosts=a=b"], &["--cert-hosts", "a=b"]),
        (&["-key="], &["--key", ""]),
        (&["-v", "-q", "-j", "-h"], &["-v", "-q", "-j", "-h"]),
        (&["-v=debug"], &["-v", "debug"]),
        (&["--v"], &["-v"]),
        (&["-"], &["-"]),
        (&["-T", "-0.5", "-1", "-1e3"], &["-T", "-0.5", "-1", "-1e3"]),
        (&["-inf"], &["--inf"]),
        (&["--", "-x", "-y=1"], &["--", "-x", "-y=1"]),
        (&["-a", "--", "--"], &["-a", "--", "--"]),
        (&["---x", "-=1", "--=1"], &["---x", "-=1", "--=1"]),
        (&["plain", "a=b"], &["plain", "a=b"]),
        (&["-é=1"], &["-é", "1"]),
    ];
    for (input, want) in cases {
        assert_eq!(go_style(os(input)), os(want), "{input:?}");
    }
}

#[cfg(unix)]
#[test]
fn non_utf8_arguments_do_not_panic() {
    use std::os::unix::ffi::OsStringExt;
    let junk = OsString::from_vec(vec![b'-', b'x', 0xff, b'=', 0xfe]);
    assert_eq!(go_style(vec![junk.clone()]), vec![junk.clone()]);
    assert!(parse_args(vec![junk.clone()]).is_err());
    let bad = OsString::from_vec(vec![0xff, 0xfe]);
    assert!(parse_args(vec![bad.clone()]).is_err());
    // As a path: any bytes the OS allows.
    let c = match parse_args(vec!["-models".into(), bad.clone()]) {
        Ok(Command::Run(c)) => c,
        other => panic!("{other:?}"),
    };
    assert_eq!(c.models, PathBuf::from(bad.clone()));
    // As a number: a clear error.
    let m = match parse_args(vec!["-workers".into(), bad]) {
        Err(Error::Usage { message }) => message,
        other => panic!("{other:?}"),
    };
    assert!(m.contains("-workers") && m.contains("UTF-8"), "{m}");
}

/// A tiny xorshift generator: the same junk on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
        from[(self.next() % from.len() as u64) as usize]
    }
}

#[test]
fn random_argument_lists_never_panic() {
    let names = [
        "http-port",
        "https-port",
        "cert",
        "key",
        "cert-hosts",
        "http-allow",
        "https-allow",
        "admin-allow",
        "models",
        "memory",
        "sessions",
        "workers",
        "queue",
        "v",
        "q",
        "j",
        "h",
        "help",
        "version",
        "shutdown-grace",
        "bind",
        "max-timeout",
        "stream-keepalive",
        "max-conns-per-ip",
        "max-body-total",
        "x",
        "",
        "-",
        "=",
    ];
    let values = [
        "0",
        "1",
        "-1",
        "65536",
        "-0.5",
        "1e9",
        "abc",
        "",
        " ",
        "=",
        "==",
        "-",
        "--",
        "---",
        "::",
        "[::1]",
        "10.0.0.0/8",
        "a,b",
        "debug",
        "é",
        "\n",
        "\u{0}",
        "99999999999999999999",
    ];
    let dashes = ["", "-", "--", "---"];
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    for _ in 0..5000 {
        let n = rng.next() % 8;
        let mut args = Vec::new();
        for _ in 0..n {
            let arg = match rng.next() % 4 {
                0 => rng.pick(&values).to_string(),
                1 => format!("{}{}", rng.pick(&dashes), rng.pick(&names)),
                _ => format!(
                    "{}{}={}",
                    rng.pick(&dashes),
                    rng.pick(&names),
                    rng.pick(&values)
                ),
            };
            args.push(OsString::from(arg));
        }
        match parse_args(args.clone()) {
            Ok(_) => {}
            Err(Error::Usage { message }) => {
                assert!(!message.is_empty() && !message.contains('\n'), "{args:?}");
            }
            Err(other) => panic!("{args:?}: {other:?}"),
        }
    }
}

#[test]
fn client_keys_and_per_ip_limit_flags() {
    let c = run(&[]);
    assert_eq!(c.keys, PathBuf::from("./keys.csv"));
    assert_eq!(
        (c.ip_rate, c.ip_burst),
        (0, 0),
        "no per-IP limit by default"
    );
    run_forms("keys", "/etc/sigorest/keys.csv", |c| {
        assert_eq!(c.keys, PathBuf::from("/etc/sigorest/keys.csv"))
    });
    run_forms("ip-rate", "120", |c| {
        assert_eq!((c.ip_rate, c.ip_burst), (120, 0))
    });
    run_forms("ip-rate", "0", |c| assert_eq!(c.ip_rate, 0));
    let c = run(&["-ip-rate", "60", "-ip-burst=5"]);
    assert_eq!((c.ip_rate, c.ip_burst), (60, 5));
    let c = run(&["--ip-burst", "5", "--ip-rate", "60"]);
    assert_eq!((c.ip_rate, c.ip_burst), (60, 5), "in any order");
    err_forms("keys", "", "empty");
    err_forms("ip-rate", "-1", "from 0 to 1000000");
    err_forms("ip-rate", "1000001", "from 0 to 1000000");
    err_forms("ip-rate", "fast", "from 0 to 1000000");
    let m = err(&["-ip-burst", "5"]);
    assert!(m.contains("-ip-burst needs -ip-rate"), "{m}");
    let m = err(&["-ip-rate", "0", "-ip-burst", "5"]);
    assert!(m.contains("-ip-burst needs -ip-rate"), "{m}");
    let m = err(&["-ip-rate", "6", "-ip-burst", "0"]);
    assert!(m.contains("from 1 to 1000000"), "{m}");
}
