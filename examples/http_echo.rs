//! A small server on sigorest's HTTP layer, to attack from outside.
//!
//! `cargo run --release --example http_echo -- [ADDR] [--tls] [--allow CIDRS] [--workers N]`
//! prints `http PORT` (and `https PORT` with `--tls`, on the next port the kernel gives) and
//! serves until killed. Routes: `/echo` (the body back), `/stream?n=5&ms=200` (SSE-like
//! pieces), `/slow?ms=500`, `/stats`. Log lines go to stderr; `ECHO_LOG=debug|info|warn`.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use serde_json::json;
use sigorest::http::AllowList;
use sigorest::http::{ListenerConfig, Request, Response, ServerConfig, Stats, start};

struct StderrLog;

impl log::Log for StderrLog {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level() && !m.target().starts_with("rustls")
    }
    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        struct Kv(String);
        impl<'k> log::kv::VisitSource<'k> for Kv {
            fn visit_pair(
                &mut self,
                k: log::kv::Key<'k>,
                v: log::kv::Value<'k>,
            ) -> Result<(), log::kv::Error> {
                self.0.push_str(&format!(" {k}={v}"));
                Ok(())
            }
        }
        let mut kv = Kv(String::new());
        let _ = r.key_values().visit(&mut kv);
        let line = format!("{:<5} {}{}\n", r.level(), r.args(), kv.0);
        let _ = std::io::stderr().write_all(line.as_bytes());
    }
    fn flush(&self) {}
}

fn number(req: &Request, key: &str, default: u64) -> u64 {
    req.query
        .as_deref()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
        .unwrap_or(default)
}

type Failure = Box<dyn std::error::Error>;

fn main() -> Result<(), Failure> {
    let level = match std::env::var("ECHO_LOG").as_deref() {
        Ok("debug") => log::LevelFilter::Debug,
        Ok("info") => log::LevelFilter::Info,
        _ => log::LevelFilter::Warn,
    };
    log::set_logger(&StderrLog)?;
    log::set_max_level(level);

    let mut args = pico_args::Arguments::from_env();
    let tls = args.contains("--tls");
    let allow: String = args
        .opt_value_from_str("--allow")?
        .unwrap_or_else(|| "127.0.0.0/8,::1/128".to_string());
    let workers: usize = args.opt_value_from_str("--workers")?.unwrap_or(100);
    let addr: SocketAddr = args
        .opt_free_from_str()?
        .unwrap_or_else(|| "127.0.0.1:0".parse().expect("literal address"));
    let allow = AllowList::parse(&allow)?;

    let stats = Arc::new(Stats::default());
    let config = ServerConfig {
        listeners: listeners(addr, allow, tls)?,
        workers,
        queue: 1024,
        limits: Default::default(),
        timeouts: Default::default(),
        stats: Arc::clone(&stats),
    };
    let server = start(config, Arc::new(move |req: &Request| handle(req, &stats)))?;
    let mut out = std::io::stdout();
    for (i, a) in server.local_addrs().iter().enumerate() {
        writeln!(
            out,
            "{} {}",
            if i == 0 { "http" } else { "https" },
            a.port()
        )?;
    }
    out.flush()?;
    loop {
        std::thread::park();
    }
}

/// The plain listener on `addr`, and with `tls` an HTTPS one (self-signed for `localhost`)
/// on another port of the same address.
fn listeners(
    addr: SocketAddr,
    allow: AllowList,
    tls: bool,
) -> Result<Vec<ListenerConfig>, Failure> {
    let mut listeners = vec![ListenerConfig {
        addr,
        allow: allow.clone(),
        tls: None,
    }];
    if tls {
        let made = rcgen::generate_simple_self_signed(vec!["localhost".to_string()])?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()));
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(vec![made.cert.der().clone()], key)?;
        listeners.push(ListenerConfig {
            addr: SocketAddr::new(addr.ip(), 0),
            allow,
            tls: Some(Arc::new(config)),
        });
    }
    Ok(listeners)
}

/// The routes.
fn handle(req: &Request, stats: &Stats) -> Response {
    match req.path.as_str() {
        "/echo" => Response::full(200, "application/octet-stream", req.body.clone()),
        "/slow" => {
            std::thread::sleep(Duration::from_millis(number(req, "ms", 500)));
            Response::full(200, "text/plain", b"slow\n".to_vec())
        }
        "/stream" => {
            let (n, ms) = (number(req, "n", 5), number(req, "ms", 200));
            Response::stream(
                200,
                "text/event-stream",
                Box::new(move |sink, _| {
                    for i in 0..n {
                        if i > 0 {
                            std::thread::sleep(Duration::from_millis(ms));
                        }
                        sink.send(format!("data: {i}\n\n").as_bytes())?;
                    }
                    Ok(())
                }),
            )
        }
        "/stats" => Response::json(
            200,
            &json!({
                "connections_open": stats.connections_open.load(Ordering::Relaxed),
                "workers_busy": stats.workers_busy.load(Ordering::Relaxed),
                "queue_depth": stats.queue_depth.load(Ordering::Relaxed),
            }),
        ),
        _ => Response::full(404, "text/plain", b"not found\n".to_vec()),
    }
}
