#!/usr/bin/env python3
"""Compatibility check with the official OpenAI Python SDK, a client nobody here wrote.

Starts a fake upstream (stdlib HTTP server) and the sigorest binary given as argv[1] on
free loopback ports, then drives sigorest with `openai`: models list, chat, a 404 that must
raise NotFoundError, a 503 that must raise InternalServerError (without the SDK retrying
it), and streaming with and without usage. Then a second sigorest with a keys.csv: the
SDK's AuthenticationError, PermissionDeniedError and RateLimitError, the model list of a
key, and the x-ratelimit-* headers. Exit status 0 when everything holds.
"""

import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import openai

RECEIVED = []


class FakeUpstream(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", "0"))))
        RECEIVED.append({"path": self.path, "auth": self.headers.get("Authorization"), "body": body})
        text = body["messages"][-1]["content"]
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = lambda delta, finish=None: {
                "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1760000000,
                "model": body["model"], "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            events = [chunk({"role": "assistant", "content": ""})]
            events += [chunk({"content": piece}) for piece in ["Hel", "lo ", "SDK"]]
            events.append(chunk({}, "stop"))
            events.append({"id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1760000000,
                           "model": body["model"], "choices": [],
                           "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8}})
            for e in events:
                self._chunk(("data: " + json.dumps(e) + "\n\n").encode())
                time.sleep(0.05)
            self._chunk(b"data: [DONE]\n\n")
            self._chunk(b"")
            return
        answer = {
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1760000000, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "echo: " + text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        }
        data = json.dumps(answer).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _chunk(self, data):
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()


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


def check(cond, what):
    if not cond:
        raise SystemExit("FAIL: " + what)
    print("ok  ", what)


def start_sigorest(binary, work, env):
    """Starts sigorest in `work` on a free port and waits for /api/health; returns (process, port)."""
    port = free_port()
    server = subprocess.Popen(
        [binary, "-http-port", str(port), "-https-port", "0", "-bind", "127.0.0.1", "-q"],
        cwd=work, env=env)
    wait_ready(f"http://127.0.0.1:{port}/api/health")
    return server, port


def stop(server):
    server.terminate()
    try:
        return server.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.kill()
        raise SystemExit("FAIL: sigorest did not stop on SIGTERM within 10 s")


def check_keys(binary, env):
    """A gateway with keys.csv, seen through the SDK."""
    key, other = "sk-sigo-sdk-" + "a" * 40, "sk-sigo-sdk-" + "b" * 40
    work = tempfile.mkdtemp(prefix="sigorest-sdk-keys-")
    with open(os.path.join(work, "keys.csv"), "w") as f:
        f.write("# SDK check\n")
        f.write(f"sdk, sha256:{hashlib.sha256(key.encode()).hexdigest()}, gpt41, 3,\n")
        f.write(f"other, sha256:{hashlib.sha256(other.encode()).hexdigest()}, *, , 1\n")
    server, port = start_sigorest(binary, work, env)
    try:
        url = f"http://127.0.0.1:{port}/v1"
        user = [{"role": "user", "content": "hi"}]
        try:
            openai.OpenAI(base_url=url, api_key="unused").models.list()
            check(False, "a wrong key raises AuthenticationError")
        except openai.AuthenticationError as e:
            check(e.status_code == 401 and e.code == "invalid_api_key", "a wrong key raises AuthenticationError")
            check("unused" not in e.message, "the key is not echoed")
        client = openai.OpenAI(base_url=url, api_key=key, max_retries=0)
        raw = client.models.with_raw_response.list()
        ids = [m.id for m in raw.parse().data]
        check(ids == ["gpt41"], f"models.list() shows the key's models only: {ids}")
        check(raw.headers.get("x-ratelimit-limit-requests") == "3"
              and raw.headers.get("x-ratelimit-remaining-requests") == "2", "x-ratelimit-* headers")
        try:
            client.chat.completions.create(model="kimi", messages=user)
            check(False, "a model the key may not use raises PermissionDeniedError")
        except openai.PermissionDeniedError as e:
            check(e.status_code == 403 and e.code == "model_not_allowed",
                  "a model the key may not use raises PermissionDeniedError (403 model_not_allowed)")
        resp = client.chat.completions.create(model="gpt41", messages=user)
        check(resp.choices[0].message.content == "echo: hi", "the key's model answers")
        try:
            client.chat.completions.create(model="gpt41", messages=user)
            check(False, "over rpm raises RateLimitError")
        except openai.RateLimitError as e:
            check(e.status_code == 429 and e.code == "rate_limit_exceeded", "over rpm raises RateLimitError")
            check(int(e.response.headers["retry-after"]) >= 1, "with Retry-After")
    finally:
        code = stop(server)
    check(code == 0, f"the keyed sigorest exits 0 on SIGTERM (got {code})")


def main():
    binary = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "target/release/sigorest")
    upstream = ThreadingHTTPServer(("127.0.0.1", 0), FakeUpstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{upstream.server_address[1]}/v1"
    work = tempfile.mkdtemp(prefix="sigorest-sdk-")
    with open(os.path.join(work, "models.csv"), "w") as f:
        f.write("gpt41, claude-h\nkimi\n")
    env = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and "PROXY" not in k.upper()}
    env.update({"MAMMOUTH_API_KEY": "sk-sdk-test", "MAMMOUTH_BASE_URL": base,
                "OLLAMA_HOST": "127.0.0.1:9"})  # Moonshot deliberately not configured
    server, port = start_sigorest(binary, work, env)
    try:
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="unused")

        ids = [m.id for m in client.models.list().data]
        check(ids == ["gpt41", "claude-h", "kimi"], f"models.list() gives the whitelist in order: {ids}")

        resp = client.chat.completions.create(model="gpt41", messages=[{"role": "user", "content": "hi"}])
        check(resp.choices[0].message.content == "echo: hi", "chat.completions.create() answers")
        check(resp.usage.total_tokens == 7, "usage passes through")
        check(RECEIVED[-1]["body"]["model"] == "gpt-4.1", "upstream got the upstream model id")
        check(RECEIVED[-1]["auth"] == "Bearer sk-sdk-test", "upstream got the provider key")

        try:
            client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
            check(False, "unknown model raises NotFoundError")
        except openai.NotFoundError as e:
            check(e.status_code == 404 and e.code == "model_not_found", "unknown model raises NotFoundError")

        before = len(RECEIVED)
        started = time.time()
        try:
            client.chat.completions.create(model="kimi", messages=[{"role": "user", "content": "x"}])
            check(False, "unconfigured provider raises InternalServerError")
        except openai.InternalServerError as e:
            check(e.status_code == 503 and e.code == "provider_not_configured",
                  "unconfigured provider raises InternalServerError (503 provider_not_configured)")
            check("MOONSHOT_API_KEY" in e.message, "the error names the variable to set")
        check(time.time() - started < 1.0, "x-should-retry: false stops the SDK's own retries")
        check(len(RECEIVED) == before, "nothing reached the upstream")

        try:
            client.chat.completions.create(model="gpt41", messages="not a list")
            check(False, "bad body raises BadRequestError")
        except openai.BadRequestError as e:
            check(e.status_code == 400, "bad body raises BadRequestError")

        pieces = []
        stamps = []
        for chunk in client.chat.completions.create(
                model="gpt41", messages=[{"role": "user", "content": "stream"}], stream=True):
            stamps.append(time.time())
            check(len(chunk.choices) == 1, "without include_usage no usage-only chunk reaches the client")
            pieces.append(chunk.choices[0].delta.content or "")
        check("".join(pieces) == "Hello SDK", f"stream yields the text chunk by chunk: {pieces}")
        check(len(stamps) >= 5 and stamps[-1] - stamps[1] > 0.1, "chunks arrive as they are sent, not at once")
        check(RECEIVED[-1]["body"]["stream_options"] == {"include_usage": True}, "upstream is asked for usage")

        last = None
        for chunk in client.chat.completions.create(
                model="gpt41", messages=[{"role": "user", "content": "stream"}], stream=True,
                stream_options={"include_usage": True}):
            last = chunk
        check(last is not None and last.usage is not None and last.usage.total_tokens == 8,
              "with include_usage the last chunk carries usage")
    finally:
        code = stop(server)
    check(code == 0, f"sigorest exits 0 on SIGTERM (got {code})")
    try:
        check_keys(binary, env)
    finally:
        upstream.shutdown()
    print("openai SDK compatibility: all checks passed")


if __name__ == "__main__":
    main()
