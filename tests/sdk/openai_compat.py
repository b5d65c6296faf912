#!/usr/bin/env python3
"""Compatibility check with the official OpenAI Python SDK, a client nobody here wrote.

Starts a fake upstream (stdlib HTTP server) and the sigorest binary given as argv[1] on
free loopback ports, then drives sigorest with `openai`: models list, chat, a 404 that must
raise NotFoundError, a 503 that must raise InternalServerError (without the SDK retrying
it), and streaming with and without usage. Exit status 0 when everything holds.
"""

import hashlib
import sys
import time

import openai

from harness import Upstream, check, chunk, gateway, usage_chunk


class FakeUpstream(Upstream):
    RECEIVED = []

    def answer(self, body):
        text = body["messages"][-1]["content"]
        if body.get("stream"):
            model = body["model"]
            events = [chunk(model, {"role": "assistant", "content": ""})]
            events += [chunk(model, {"content": piece}) for piece in ["Hel", "lo ", "SDK"]]
            events.append(chunk(model, {}, "stop"))
            events.append(usage_chunk(model, 5, 3))
            self.send_stream(events)
            return
        self.send_json({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1760000000, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "echo: " + text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        })


RECEIVED = FakeUpstream.RECEIVED


def check_keys(binary):
    """A gateway with keys.csv, seen through the SDK."""
    key, other = "sk-sigo-sdk-" + "a" * 40, "sk-sigo-sdk-" + "b" * 40
    keys = ("# SDK check\n"
            f"sdk, sha256:{hashlib.sha256(key.encode()).hexdigest()}, gpt41, 3,\n"
            f"other, sha256:{hashlib.sha256(other.encode()).hexdigest()}, *, , 1\n")
    with gateway(binary, FakeUpstream, files={"keys.csv": keys}) as base:
        url = f"{base}/v1"
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


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/sigorest"
    with gateway(binary, FakeUpstream) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")

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
        for event in client.chat.completions.create(
                model="gpt41", messages=[{"role": "user", "content": "stream"}], stream=True):
            stamps.append(time.time())
            check(len(event.choices) == 1, "without include_usage no usage-only chunk reaches the client")
            pieces.append(event.choices[0].delta.content or "")
        check("".join(pieces) == "Hello SDK", f"stream yields the text chunk by chunk: {pieces}")
        check(len(stamps) >= 5 and stamps[-1] - stamps[1] > 0.1, "chunks arrive as they are sent, not at once")
        check(RECEIVED[-1]["body"]["stream_options"] == {"include_usage": True}, "upstream is asked for usage")

        last = None
        for event in client.chat.completions.create(
                model="gpt41", messages=[{"role": "user", "content": "stream"}], stream=True,
                stream_options={"include_usage": True}):
            last = event
        check(last is not None and last.usage is not None and last.usage.total_tokens == 8,
              "with include_usage the last chunk carries usage")
    check_keys(binary)
    print("openai SDK compatibility: all checks passed")


if __name__ == "__main__":
    main()
