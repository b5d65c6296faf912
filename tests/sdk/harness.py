"""Shared pieces of the SDK checks: a fake upstream base (stdlib HTTP server), starting the
sigorest binary on a free loopback port with a fresh working directory, and `check`."""

import contextlib
import json
import os
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)
    print("ok  ", what)


class Upstream(BaseHTTPRequestHandler):
    """An OpenAI-compatible provider: subclasses answer in `answer(body)`, with `send_json`
    or `send_stream`. Every request body is recorded in `RECEIVED` of the subclass."""

    protocol_version = "HTTP/1.1"
    RECEIVED = []

    def setup(self):
        super().setup()
        # As real providers do: without it, the head and each chunk of a stream are small
        # writes that Nagle's algorithm holds back on a kept-alive (pooled) connection until
        # the gateway's delayed ACK, 40 ms later.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        type(self).RECEIVED.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        self.answer(body)

    def send_json(self, obj, status=200):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def send_stream(self, events, gap=0.05):
        """`events`: JSON objects, sent as `data:` events `gap` seconds apart, then [DONE]."""
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for e in events:
            self._chunk(("data: " + json.dumps(e) + "\n\n").encode())
            time.sleep(gap)
        self._chunk(b"data: [DONE]\n\n")
        self._chunk(b"")

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


def chunk(model, delta, finish=None):
    """One chat.completion.chunk with one choice."""
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1760000000,
            "model": model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}


def usage_chunk(model, prompt, completion):
    return {"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1760000000,
            "model": model, "choices": [],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                      "total_tokens": prompt + completion}}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, deadline=20.0):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"sigorest did not answer {url} in {deadline} s")


@contextlib.contextmanager
def gateway(binary, handler, models="gpt41, claude-h\nkimi\n", files=None, work=None, args=()):
    """Runs the fake upstream `handler` and sigorest (Mammouth pointed at the fake, Moonshot
    deliberately not configured, more flags in `args`) in `work` (a new temporary directory
    if None); yields the gateway's base URL. Checks the exit on SIGTERM."""
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{upstream.server_address[1]}/v1"
    port = free_port()
    work = work or tempfile.mkdtemp(prefix="sigorest-sdk-")
    with open(os.path.join(work, "models.csv"), "w") as f:
        f.write(models)
    for name, text in (files or {}).items():
        with open(os.path.join(work, name), "w") as f:
            f.write(text)
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and "PROXY" not in k.upper()}
    env.update({"MAMMOUTH_API_KEY": "sk-sdk-test", "MAMMOUTH_BASE_URL": base, "OLLAMA_HOST": "127.0.0.1:9"})
    server = subprocess.Popen(
        [os.path.abspath(binary), "-http-port", str(port), "-https-port", "0", "-bind", "127.0.0.1", "-q",
         *args],
        cwd=work, env=env)
    try:
        wait_ready(f"http://127.0.0.1:{port}/api/health")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.terminate()
        try:
            code = server.wait(timeout=10)
        except subprocess.TimeoutExpired:
            server.kill()
            raise SystemExit("FAIL: sigorest did not stop on SIGTERM within 10 s")
        upstream.shutdown()
    check(code == 0, f"sigorest exits 0 on SIGTERM (got {code})")
