//! The server's `-h` text, in sections: flags, environment, files.

use super::{Config, GRACE_MAX_SECS, IP_RATE_MAX, QUEUE_MAX, WORKERS_MAX};

/// The `-h` text.
pub fn usage() -> String {
    format!(
        "\
sigorest {version}: an OpenAI-compatible LLM gateway for a home or office network.

Usage: sigorest [flags]

{flags}{limits}{routing}{llama}{environment}{files}
Logs go to stderr. A bad flag or value exits with status 2.
",
        version = crate::VERSION,
        flags = flags(&Config::default()),
        limits = limits(&Config::default()),
        routing = ROUTING,
        llama = llama(),
        environment = ENVIRONMENT,
        files = FILES,
    )
}

fn flags(d: &Config) -> String {
    format!(
        "\
Flags (one dash or two; the value after a space or '='):
  -http-port N         plain HTTP port; 0 disables it (default {http})
  -https-port N        HTTPS port; 0 disables it (default {https})
  -bind ADDR           listen address for both ports
                       (default {bind}, that is every IPv4 and IPv6 address)
  -cert PATH           TLS certificate, PEM (default {cert})
  -key PATH            TLS private key, PEM (default {key});
                       when both files are missing, a self-signed pair is
                       generated and written there
  -cert-hosts LIST     extra host names / IP addresses, comma-separated, for a
                       generated certificate (localhost, 127.0.0.1, ::1 and the
                       host name are always in it)
  -http-allow CIDRS    who may use the HTTP port
                       (default {http_allow})
  -https-allow CIDRS   who may use the HTTPS port
                       (default {https_allow})
  -admin-allow CIDRS   who may change state, e.g. PUT /api/memory
                       (default {admin_allow}; empty: nobody)
  -metrics-allow CIDRS who may read /metrics and /api/usage
                       (default: the -admin-allow list; empty: nobody)
  -models PATH         whitelist of cloud models (default {models})
  -memory PATH         memory block put first into every request
                       (default {memory})
  -sessions DIR        session files (default {sessions})
  -usage-file PATH     usage totals per key and model, kept over restarts
                       (default usage.json in the sessions directory)
  -usage-flush S       write the usage file at most every S seconds,
                       1-{flush_max} (default {flush}), and at shutdown
",
        http = d.http_port,
        https = d.https_port,
        bind = d.bind,
        cert = d.cert.display(),
        key = d.key.display(),
        http_allow = d.http_allow,
        https_allow = d.https_allow,
        admin_allow = d.admin_allow,
        models = d.models.display(),
        memory = d.memory.display(),
        sessions = d.sessions.display(),
        flush = d.usage_flush.as_secs(),
        flush_max = super::USAGE_FLUSH_MAX_SECS,
    )
}

const ROUTING: &str = "  -fallback RULES      models tried next when one cannot answer, e.g.
                       gpt41=kimi|zai-glm46,claude-h=claude-s45
  -auto LIST           models the name \"auto\" picks from, healthiest first
";

fn llama() -> String {
    format!(
        "  -llama-server PATH   a llama.cpp llama-server to start and watch (a path, or
                       a program in PATH); needs -llama-model
  -llama-model FILE    the .gguf model it serves (passed as -m)
  -llama-args \"ARGS\"   more arguments for it, split like a shell line; not
                       --host, --port or -m, which sigorest sets
  -llama-name NAME     the model name clients use for it (default local)
  -llama-port N        its port on 127.0.0.1 (default: a free port)
  -llama-parallel N    requests sent to it at once, 1-256 (default the
                       --parallel in -llama-args, held to 1-256 too, else 1);
                       {queue_per_slot} per slot may wait, beyond that: 429
  -llama-queue-wait S  seconds a request may wait for a slot before 429,
                       0-3600 (default 60)
",
        queue_per_slot = super::llama::QUEUE_PER_SLOT,
    )
}

fn limits(d: &Config) -> String {
    format!(
        "  -keys PATH           client keys (default {keys}); when the file exists,
                       every API call but /api/health needs one of its keys
  -ip-rate N           requests a minute per client address, 0-{ip_max};
                       0: no per-IP limit (default 0)
  -ip-burst N          requests a client address may make at once
                       (default: ten seconds' worth of -ip-rate)
  -workers N           requests answered at once, 1-{workers_max} (default {workers})
  -queue N             requests that may wait for a place, 1-{queue_max};
                       beyond that: 503 (default {queue})
  -shutdown-grace S    seconds in-flight requests may run on after SIGTERM,
                       0-{grace_max} (default {grace})
  -max-timeout S       the highest 'timeout' a request may ask for, in
                       seconds, 1-{max_timeout_max} (default {max_timeout})
  -stream-keepalive S  seconds without an event from the provider after which a
                       stream gets a keep-alive (a ping under /v1/messages),
                       0-{keepalive_max}; 0: never (default {keepalive})
  -max-conns-per-ip N  open connections from one address (an IPv6 /64) at
                       once; beyond: closed at once; 0: no cap (default {per_ip})
  -max-body-total MIB  request bodies in flight at once, all together; beyond:
                       503 overloaded (default {body_total}); a single body is
                       at most 32 MiB or this, whichever is smaller
  -v LEVEL             log level: debug, info, warn, error (or trace)
                       (default info)
  -q                   quiet: errors only (wins over -v)
  -j                   log JSON lines instead of text
  -version             print the version and exit
  -h, -help            print this help and exit
",
        keys = d.keys.display(),
        ip_max = IP_RATE_MAX,
        workers = d.workers,
        workers_max = WORKERS_MAX,
        queue = d.queue,
        queue_max = QUEUE_MAX,
        grace = d.shutdown_grace.as_secs(),
        grace_max = GRACE_MAX_SECS,
        max_timeout = d.max_timeout.as_secs(),
        max_timeout_max = super::MAX_TIMEOUT_MAX_SECS,
        keepalive = d.stream_keepalive.as_secs(),
        keepalive_max = super::STREAM_KEEPALIVE_MAX_SECS,
        per_ip = d.max_conns_per_ip,
        body_total = d.max_body_total / super::MIB,
    )
}

const ENVIRONMENT: &str = "
Environment:
  MAMMOUTH_API_KEY, MOONSHOT_API_KEY, ZAI_API_KEY
                       provider API keys; a provider without one answers 503
  MAMMOUTH_BASE_URL    default https://api.mammouth.ai/v1
  MOONSHOT_BASE_URL    default https://api.moonshot.ai/v1
  ZAI_BASE_URL         default https://api.z.ai/api/paas/v4
                       (each: the part of the URL before /chat/completions)
  OLLAMA_HOST          local Ollama server (default http://localhost:11434;
                       host:port and :port accepted)
";

const FILES: &str = "
Files (the server runs without any; a file on disk wins over the built-in
default):
  models.csv           cloud short codes, separated by commas or newlines;
                       # starts a comment
  memory.json          {\"content\": \"...\", \"cache\": true};
                       replaced by PUT /api/memory
  keys.csv             name, sha256:<hex of the key>, models, rpm, concurrency
                       (sigoe -newkey NAME prints a key and its line)
  <sessions>/<model>@<session_id>.json
                       session history: the last 20 messages, at most
                       2 MiB; at most 1000 sessions (oldest dropped)
  <sessions>/usage.json
                       requests, tokens and cost per key and model (UTC days)
  certs/server.crt, certs/server.key
                       TLS certificate and key (key mode 0600)
";
