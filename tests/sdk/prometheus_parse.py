#!/usr/bin/env python3
"""The /metrics exposition read by the official Prometheus Python client's parser, a reader
nobody here wrote.

Starts a fake upstream (stdlib HTTP server) and the sigorest binary given as argv[1] on free
loopback ports, sends a completion, a stream, a request for an unknown model and one the
provider fails, then parses GET /metrics with prometheus_client.parser and checks the
families, their types, the counts, and that every histogram is well formed. Exit status 0
when everything holds.
"""

import json
import os
import shutil
import sys
import tempfile
import urllib.error
import urllib.request

from prometheus_client.parser import text_string_to_metric_families

from harness import Upstream, check, chunk, gateway, usage_chunk


class FakeUpstream(Upstream):
    RECEIVED = []

    def answer(self, body):
        model = body["model"]
        if body["messages"][-1]["content"] == "fail":
            self.send_json({"error": {"message": "provider down", "type": "server_error"}}, status=500)
            return
        if body.get("stream"):
            self.send_stream([chunk(model, {"role": "assistant", "content": "Hi"}),
                              chunk(model, {}, "stop"), usage_chunk(model, 6, 2)], gap=0)
            return
        self.send_json({
            "id": "c1", "object": "chat.completion", "created": 1760000000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        })


def post(url, body):
    req = urllib.request.Request(url, data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def scrape(base):
    with urllib.request.urlopen(base + "/metrics", timeout=10) as r:
        return r.headers.get("Content-Type"), r.read().decode()


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/sigorest"
    work = tempfile.mkdtemp(prefix="sigorest-prom-")
    with gateway(binary, FakeUpstream, work=work) as base:
        chat = base + "/v1/chat/completions"
        msg = lambda text: [{"role": "user", "content": text}]
        check(post(chat, {"model": "gpt41", "messages": msg("hi")})[0] == 200, "a completion")
        status, body = post(chat, {"model": "gpt41", "messages": msg("hi"), "stream": True})
        check(status == 200 and body.rstrip().endswith(b"data: [DONE]"), "a stream")
        check(post(chat, {"model": "made-up", "messages": msg("x")})[0] == 404, "an unknown model")
        check(post(chat, {"model": "claude-h", "messages": msg("fail"), "retries": 1})[0] == 502,
              "a provider failure")

        content_type, text = scrape(base)
        check(content_type.startswith("text/plain; version=0.0.4"), f"content type {content_type}")
        families = {f.name: f for f in text_string_to_metric_families(text)}

        types = {
            "sigorest_requests": "counter",
            "sigorest_request_duration_seconds": "histogram",
            "sigorest_time_to_first_token_seconds": "histogram",
            "sigorest_overhead_seconds": "histogram",
            "sigorest_tokens": "counter",
            "sigorest_cost_usd": "counter",
            "sigorest_upstream_errors": "counter",
            "sigorest_upstream_retries": "counter",
            "sigorest_breaker_open": "gauge",
            "sigorest_queue_depth": "gauge",
            "sigorest_queue_capacity": "gauge",
            "sigorest_workers_busy": "gauge",
            "sigorest_workers_total": "gauge",
            "sigorest_connections_open": "gauge",
            "sigorest_overloaded": "counter",
            "sigorest_build_info": "gauge",
            "sigorest_start_time_seconds": "gauge",
        }
        for name, kind in types.items():
            check(name in families and families[name].type == kind, f"{name} is a {kind}")
        for f in families.values():
            check(f.documentation != "", f"{f.name} has HELP text")

        def value(family, sample_name, **labels):
            found = [s.value for s in families[family].samples
                     if s.name == sample_name and all(s.labels.get(k) == v for k, v in labels.items())]
            return sum(found) if found else None

        req = "sigorest_requests_total"
        check(value("sigorest_requests", req, model="gpt41", provider="mammouth", status="200") == 2,
              "two gpt41 requests answered 200")
        check(value("sigorest_requests", req, model="", provider="", status="404") == 1,
              "the unknown model counts under model=\"\"")
        check(value("sigorest_requests", req, model="claude-h", status="502") == 1, "the failure counts as 502")
        check(value("sigorest_tokens", "sigorest_tokens_total", model="gpt41", kind="prompt") == 11,
              "prompt tokens of the completion and the stream (5 + 6)")
        check(value("sigorest_tokens", "sigorest_tokens_total", model="gpt41", kind="completion") == 4,
              "completion tokens (2 + 2)")
        check(value("sigorest_cost_usd", "sigorest_cost_usd_total", model="gpt41") > 0, "gpt41 cost something")
        check(value("sigorest_upstream_errors", "sigorest_upstream_errors_total",
                    provider="mammouth", kind="server_error") == 1, "the provider's 500 is an upstream error")
        check(value("sigorest_time_to_first_token_seconds", "sigorest_time_to_first_token_seconds_count",
                    model="gpt41") == 1, "one stream's first token")
        check(value("sigorest_build_info", "sigorest_build_info") == 1, "build info")
        check(not any("made-up" in str(s.labels) for f in families.values() for s in f.samples),
              "no label carries the made-up model name")

        for name, f in families.items():
            if f.type != "histogram":
                continue
            series = {}
            for s in f.samples:
                key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
                series.setdefault(key, {"buckets": [], "count": None})
                if s.name.endswith("_bucket"):
                    series[key]["buckets"].append((float(s.labels["le"]), s.value))
                elif s.name.endswith("_count"):
                    series[key]["count"] = s.value
            for key, h in series.items():
                les = [le for le, _ in h["buckets"]]
                counts = [c for _, c in h["buckets"]]
                check(les == sorted(les) and les[-1] == float("inf"), f"{name}{key}: bounds ascend to +Inf")
                check(counts == sorted(counts), f"{name}{key}: buckets are cumulative")
                check(counts[-1] == h["count"], f"{name}{key}: +Inf equals the count")
        check(max(le for s in families["sigorest_request_duration_seconds"].samples
                  if s.name.endswith("_bucket") for le in [float(s.labels["le"])] if le != float("inf")) >= 300,
              "request buckets reach minutes")
    check(os.path.exists(os.path.join(work, ".sessions", "usage.json")), "usage written at shutdown")
    shutil.rmtree(work, ignore_errors=True)
    print("prometheus_client parse: all checks passed")


if __name__ == "__main__":
    main()
