//! The gateway under test, started in-process on 127.0.0.1:0 with its own temporary
//! directory for `models.csv`, `memory.json`, sessions and certificates, and a small HTTP
//! client for talking to it.

#![allow(dead_code)]

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;
use sigorest::config::{Config, LlamaConfig};
use sigorest::env::Env;
use sigorest::http::AllowList;
use sigorest::server::{self, Running};

/// A directory under the system's temporary directory, removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let dir = std::env::temp_dir().join(format!(
            "sigorest-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create temp dir");
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A change to the configuration (see [`Options::configure`]).
pub type Configure = std::sync::Arc<dyn Fn(&mut Config) + Send + Sync>;

/// How to start a gateway.
#[derive(Clone)]
pub struct Options {
    pub env: Vec<(String, String)>,
    /// Written as `models.csv` when given; otherwise the embedded whitelist applies.
    pub models_csv: Option<String>,
    /// Written as `memory.json` when given.
    pub memory_json: Option<String>,
    /// Written as `keys.csv` when given; otherwise keys are not required.
    pub keys_csv: Option<String>,
    /// `-ip-rate` and `-ip-burst` (0: off / the default).
    pub ip_rate: u32,
    pub ip_burst: u32,
    pub workers: usize,
    pub queue: usize,
    pub https: bool,
    pub http_allow: String,
    pub https_allow: String,
    pub admin_allow: String,
    /// Changes to the configuration, applied after the settings above.
    pub configure: Vec<Configure>,
    /// A llama-server to supervise.
    pub llama: Option<LlamaConfig>,
    /// `-metrics-allow`; `None`: the admin list.
    pub metrics_allow: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            env: Vec::new(),
            models_csv: None,
            memory_json: None,
            keys_csv: None,
            ip_rate: 0,
            ip_burst: 0,
            workers: 16,
            queue: 64,
            https: false,
            http_allow: "127.0.0.0/8,::1/128".into(),
            https_allow: "127.0.0.0/8,::1/128".into(),
            admin_allow: "127.0.0.0/8,::1/128".into(),
            configure: Vec::new(),
            llama: None,
            metrics_allow: None,
        }
    }
}

impl Options {
    /// Every cloud provider pointed at this base URL, with a key set.
    pub fn upstream(mut self, base_url: &str) -> Options {
        for (key, url) in [
            ("MAMMOUTH_API_KEY", "MAMMOUTH_BASE_URL"),
            ("MOONSHOT_API_KEY", "MOONSHOT_BASE_URL"),
            ("ZAI_API_KEY", "ZAI_BASE_URL"),
        ] {
            self.env
                .push((key.into(), format!("test-key-{}", key.to_lowercase())));
            self.env.push((url.into(), base_url.into()));
        }
        // Nothing answers here: discovery fails fast and quietly.
        self.env.push(("OLLAMA_HOST".into(), "127.0.0.1:9".into()));
        self
    }

    pub fn var(mut self, name: &str, value: &str) -> Options {
        self.env.retain(|(n, _)| n != name);
        self.env.push((name.into(), value.into()));
        self
    }

    pub fn models(mut self, csv: &str) -> Options {
        self.models_csv = Some(csv.into());
        self
    }

    pub fn memory(mut self, json: &str) -> Options {
        self.memory_json = Some(json.into());
        self
    }

    /// Any other setting: `f` changes the configuration before the gateway starts.
    pub fn configure(mut self, f: impl Fn(&mut Config) + Send + Sync + 'static) -> Options {
        self.configure.push(std::sync::Arc::new(f));
        self
    }

    pub fn llama(mut self, config: LlamaConfig) -> Options {
        self.llama = Some(config);
        self
    }

    pub fn keys(mut self, csv: &str) -> Options {
        self.keys_csv = Some(csv.into());
        self
    }

    pub fn ip_limit(mut self, per_minute: u32, burst: u32) -> Options {
        self.ip_rate = per_minute;
        self.ip_burst = burst;
        self
    }

    pub fn workers(mut self, workers: usize, queue: usize) -> Options {
        self.workers = workers;
        self.queue = queue;
        self
    }
}

/// A running gateway; stopped on drop.
pub struct Gateway {
    running: Option<Running>,
    pub dir: TempDir,
    pub http: SocketAddr,
    pub https: Option<SocketAddr>,
    pub config: Config,
}

impl Gateway {
    pub fn start(opts: Options) -> Gateway {
        Gateway::try_start(opts).expect("gateway starts")
    }

    pub fn try_start(opts: Options) -> Result<Gateway, sigorest::Error> {
        let dir = TempDir::new("gw");
        if let Some(csv) = &opts.models_csv {
            std::fs::write(dir.join("models.csv"), csv).expect("write models.csv");
        }
        if let Some(json) = &opts.memory_json {
            std::fs::write(dir.join("memory.json"), json).expect("write memory.json");
        }
        if let Some(csv) = &opts.keys_csv {
            std::fs::write(dir.join("keys.csv"), csv).expect("write keys.csv");
        }
        if opts.https {
            // The certificate's directory, given explicitly below, must exist (only the
            // default `./certs` is created).
            std::fs::create_dir(dir.join("certs")).expect("create certs");
        }
        // New settings get their defaults (`..Config::default()`) unless a test sets them.
        #[allow(clippy::needless_update)]
        let mut config = Config {
            http_port: 0,
            https_port: 0,
            cert: dir.join("certs/server.crt"),
            key: dir.join("certs/server.key"),
            cert_hosts: Vec::new(),
            http_allow: AllowList::parse(&opts.http_allow).expect("allow list"),
            https_allow: AllowList::parse(&opts.https_allow).expect("allow list"),
            admin_allow: AllowList::parse(&opts.admin_allow).expect("allow list"),
            metrics_allow: opts
                .metrics_allow
                .as_deref()
                .map(|l| AllowList::parse(l).expect("allow list")),
            models: dir.join("models.csv"),
            memory: dir.join("memory.json"),
            sessions: dir.join("sessions"),
            keys: dir.join("keys.csv"),
            ip_rate: opts.ip_rate,
            ip_burst: opts.ip_burst,
            workers: opts.workers,
            queue: opts.queue,
            log_level: log::LevelFilter::Info,
            json_log: false,
            shutdown_grace: Duration::from_secs(5),
            bind: "127.0.0.1".parse().expect("ip"),
            llama: opts.llama.clone(),
            ..Config::default()
        };
        for f in &opts.configure {
            f(&mut config);
        }
        let any_port: SocketAddr = "127.0.0.1:0".parse().expect("addr");
        let https = opts.https.then_some(any_port);
        let running = server::start_on(
            &config,
            Env::from_pairs(opts.env.clone()),
            Some(any_port),
            https,
        )?;
        let http = running.http.expect("http listener");
        let https = running.https;
        Ok(Gateway {
            running: Some(running),
            dir,
            http,
            https,
            config,
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("running")
    }

    /// Stops the gateway, giving requests in flight `grace` to finish.
    pub fn stop(mut self, grace: Duration) -> bool {
        self.running.take().map(|r| r.stop(grace)).unwrap_or(true)
    }

    pub fn get(&self, path: &str) -> Reply {
        request(&self.url(path), "GET", None, &[])
    }

    pub fn post(&self, path: &str, body: &[u8]) -> Reply {
        request(&self.url(path), "POST", Some(body), &[])
    }

    /// A request with extra headers (`Authorization`, ...).
    pub fn send(
        &self,
        method: &str,
        path: &str,
        body: Option<&[u8]>,
        headers: &[(&str, &str)],
    ) -> Reply {
        request(&self.url(path), method, body, headers)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Reply {
        self.post(path, &serde_json::to_vec(body).expect("json"))
    }

    pub fn put_json(&self, path: &str, body: &Value) -> Reply {
        request(
            &self.url(path),
            "PUT",
            Some(&serde_json::to_vec(body).expect("json")),
            &[],
        )
    }

    /// A chat completion with the given model and one user message, plus extra fields.
    pub fn chat(&self, model: &str, text: &str, extra: Value) -> Reply {
        let mut body =
            serde_json::json!({"model": model, "messages": [{"role": "user", "content": text}]});
        if let (Some(b), Some(e)) = (body.as_object_mut(), extra.as_object()) {
            for (k, v) in e {
                b.insert(k.clone(), v.clone());
            }
        }
        self.post_json("/v1/chat/completions", &body)
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop(Duration::from_secs(2));
        }
    }
}

/// A complete answer.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "body is not JSON ({e}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Asserts the OpenAI error shape with this status and code, and returns the message.
    pub fn assert_error(&self, status: u16, code: &str) -> String {
        assert_eq!(self.status, status, "status; body: {}", self.text());
        let v = self.json();
        let err = &v["error"];
        assert_eq!(err["code"], code, "code; body: {v}");
        assert!(err["type"].is_string(), "type; body: {v}");
        assert!(
            err.as_object().is_some_and(|o| o.contains_key("param")),
            "param; body: {v}"
        );
        let message = err["message"].as_str().unwrap_or_default().to_string();
        assert!(!message.is_empty(), "message; body: {v}");
        message
    }
}

/// The tests' ureq agent: statuses as answers, no proxy, 30 s at most; it keeps its
/// connections for the requests after.
pub fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .timeout_global(Some(Duration::from_secs(30)))
        .build()
        .new_agent()
}

/// One request with ureq (a client nobody here wrote).
pub fn request(url: &str, method: &str, body: Option<&[u8]>, headers: &[(&str, &str)]) -> Reply {
    let agent = client();
    let mut builder = ureq::http::Request::builder().method(method).uri(url);
    for (n, v) in headers {
        builder = builder.header(*n, *v);
    }
    let req = builder
        .body(body.map(<[u8]>::to_vec).unwrap_or_default())
        .expect("request");
    let mut resp = agent
        .run(req)
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = resp.status().as_u16();
    let headers = resp
        .headers()
        .iter()
        .map(|(n, v)| (n.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
        .collect();
    let mut body = Vec::new();
    let _ = resp.body_mut().as_reader().read_to_end(&mut body);
    Reply {
        status,
        headers,
        body,
    }
}

/// A POST sent on a new connection that is left open and unread: the caller reads it, or
/// drops it to leave (a client that hangs up).
pub fn post_and_keep(
    addr: SocketAddr,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> std::net::TcpStream {
    use std::io::Write;
    let mut sock = std::net::TcpStream::connect(addr).expect("connect");
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .expect("read timeout");
    let mut head = format!("POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    sock.write_all(&[head.as_bytes(), body].concat())
        .expect("send");
    sock
}

/// Locks a mutex, recovering from poisoning (a panicking test thread must not hide the
/// first failure behind a second one).
pub fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
