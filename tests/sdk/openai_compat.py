#!/usr/bin/env python3
"""Compatibility check with the official OpenAI Python SDK, a client nobody here wrote.

Starts a fake upstream (stdlib HTTP server) and the sigorest binary given as argv[1] on
free loopback ports, then drives sigorest with `openai`: models list, chat, a 404 that must
raise NotFoundError, a 503 that must raise InternalServerError (without the SDK retrying
it), and streaming with and without usage; then the Responses API: text, a function call
and its output sent back, structured output with `responses.parse`, streams through
`responses.stream` (text and a function call) and `create(stream=True)`, and the
BadRequestError for `previous_response_id`. Exit status 0 when everything holds.
"""

import hashlib
import json
import sys
import time
import urllib.request

import openai
import pydantic
from openai.types.responses import Response, ResponseStreamEvent

from harness import Upstream, check, chunk, gateway, usage_chunk


class FakeUpstream(Upstream):
    RECEIVED = []

    def answer(self, body):
        if self.path.endswith("/embeddings"):
            inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
            self.send_json({"object": "list", "model": body["model"],
                            "data": [{"object": "embedding", "index": i, "embedding": [0.5, -0.25]}
                                     for i in range(len(inputs))],
                            "usage": {"prompt_tokens": 3, "total_tokens": 3}})
            return
        last = body["messages"][-1]
        if body.get("tools") and last["role"] == "user" and last["content"] == "two calls, gemini style":
            self.two_calls_without_index(body)
            return
        if body.get("tools") and last["role"] == "user":
            self.call_tool(body)
            return
        if last["role"] == "tool":
            self.reply(body, "result: " + last["content"])
            return
        if body.get("response_format", {}).get("type") == "json_schema":
            self.reply(body, json.dumps({"city": "Lyon", "celsius": 12}))
            return
        text = last["content"]
        if text == "think":
            self.think(body)
            return
        if text == "refuse":
            self.refuse(body)
            return
        if body.get("stream"):
            model = body["model"]
            events = [chunk(model, {"role": "assistant", "content": ""})]
            events += [chunk(model, {"content": piece}) for piece in ["Hel", "lo ", "SDK"]]
            events.append(chunk(model, {}, "stop"))
            events.append(usage_chunk(model, 5, 3))
            # "slowly": a model that pauses longer than -stream-keepalive between its pieces.
            self.send_stream(events, gap=1.3 if text == "slowly" else 0.05)
            return
        self.send_json({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1760000000, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "echo: " + text},
                         "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        })

    def reply(self, body, text):
        if body.get("stream"):
            model = body["model"]
            self.send_stream([chunk(model, {"role": "assistant", "content": text}), chunk(model, {}, "stop"),
                              usage_chunk(model, 5, 2)])
            return
        self.send_json({
            "id": "chatcmpl-3", "object": "chat.completion", "created": 1760000000, "model": body["model"],
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
        })

    def think(self, body):
        """A thinking model's answer: its reasoning apart (as DeepSeek, Kimi, GLM send it)."""
        model = body["model"]
        if body.get("stream"):
            events = [chunk(model, {"role": "assistant", "reasoning_content": "Let me "}),
                      chunk(model, {"reasoning_content": "see."}), chunk(model, {"content": "Done."}),
                      chunk(model, {}, "stop"), usage_chunk(model, 5, 3)]
            self.send_stream(events)
            return
        self.send_json({
            "id": "chatcmpl-4", "object": "chat.completion", "created": 1760000000, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": "Done.", "reasoning_content": "Let me see."}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        })

    def refuse(self, body):
        """OpenAI's refusal: `refusal` instead of content."""
        model = body["model"]
        if body.get("stream"):
            self.send_stream([chunk(model, {"role": "assistant", "content": None, "refusal": ""}),
                              chunk(model, {"refusal": "I can't "}), chunk(model, {"refusal": "help."}),
                              chunk(model, {}, "stop"), usage_chunk(model, 5, 3)])
            return
        self.send_json({
            "id": "chatcmpl-5", "object": "chat.completion", "created": 1760000000, "model": model,
            "choices": [{"index": 0, "finish_reason": "stop", "message": {
                "role": "assistant", "content": None, "refusal": "I can't help."}}],
            "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
        })

    def two_calls_without_index(self, body):
        """Two parallel calls streamed as Gemini's OpenAI-compatible API does: no `index`,
        each whole call in a chunk of its own."""
        model = body["model"]
        calls = [{"id": "call_g1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Lyon"}'}},
                 {"id": "call_g2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}]
        events = [chunk(model, {"role": "assistant", "tool_calls": [c]}) for c in calls]
        events += [chunk(model, {}, "tool_calls"), usage_chunk(model, 9, 8)]
        self.send_stream(events)

    def call_tool(self, body):
        """A call of the first tool with {"city": "Lyon"}."""
        name = body["tools"][0]["function"]["name"]
        model = body["model"]
        if body.get("stream"):
            call = {"index": 0, "id": "call_sdk1", "type": "function", "function": {"name": name, "arguments": ""}}
            events = [chunk(model, {"role": "assistant", "content": None, "tool_calls": [call]})]
            for piece in ['{"city":', '"Lyon"}']:
                events.append(chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
            events.append(chunk(model, {}, "tool_calls"))
            events.append(usage_chunk(model, 9, 4))
            self.send_stream(events)
            return
        self.send_json({
            "id": "chatcmpl-2", "object": "chat.completion", "created": 1760000000, "model": model,
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": None, "tool_calls": [{"id": "call_sdk1", "type": "function",
                    "function": {"name": name, "arguments": '{"city":"Lyon"}'}}]}}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13},
        })


RECEIVED = FakeUpstream.RECEIVED

WEATHER = [{"type": "function", "name": "get_weather", "description": "Weather of a city", "strict": None,
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]


def raw_events(client, body):
    """The data of each event of a streamed POST /v1/responses, read without the SDK."""
    req = urllib.request.Request(f"{client.base_url}responses", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        text = r.read().decode()
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


class Weather(pydantic.BaseModel):
    city: str
    celsius: int


def responses_checks(client):
    resp = client.responses.create(model="gpt41", input="hi", instructions="Be brief.")
    check(resp.output_text == "echo: hi", f"responses.create() answers, output_text: {resp.output_text!r}")
    check(resp.id.startswith("resp_") and resp.object == "response" and resp.status == "completed",
          "a Response object, completed")
    check(resp.usage.input_tokens == 5 and resp.usage.output_tokens == 2 and resp.usage.total_tokens == 7,
          "usage in the Responses terms")
    check(RECEIVED[-1]["body"]["messages"][0] == {"role": "system", "content": "Be brief."},
          "instructions went upstream as the system message")

    resp = client.responses.create(model="gpt41", input="Weather in Lyon?", tools=WEATHER)
    call = resp.output[0]
    check(call.type == "function_call" and call.name == "get_weather"
          and json.loads(call.arguments) == {"city": "Lyon"}, "tools give a function_call output item")
    check(RECEIVED[-1]["body"]["tools"][0]["function"]["name"] == "get_weather", "the tool went upstream")

    history = [{"role": "user", "content": "Weather in Lyon?"}] + resp.output
    history.append({"type": "function_call_output", "call_id": call.call_id, "output": "12 C"})
    resp = client.responses.create(model="gpt41", input=history, tools=WEATHER)
    check(resp.output_text == "result: 12 C", "a function_call_output round trip is answered")
    sent = RECEIVED[-1]["body"]["messages"]
    check(sent[-2]["tool_calls"][0]["id"] == call.call_id and sent[-1]["role"] == "tool",
          "the call and its output went upstream as tool_calls and a tool message")

    resp = client.responses.create(model="gpt41", input="think")
    check([i.type for i in resp.output] == ["reasoning", "message"] and resp.output_text == "Done."
          and resp.output[0].content[0].text == "Let me see.", f"a provider's reasoning is a reasoning item: {resp.output}")
    with client.responses.stream(model="gpt41", input="think") as stream:
        thought = "".join(e.delta for e in stream if e.type == "response.reasoning_text.delta")
        final = stream.get_final_response()
    check(thought == "Let me see." and [i.type for i in final.output] == ["reasoning", "message"]
          and final.output_text == "Done.", f"streamed reasoning, then the message: {final.output}")

    resp = client.responses.create(model="gpt41", input="hi", reasoning={"effort": "low"})
    check(RECEIVED[-1]["body"].get("reasoning_effort") == "low" and resp.reasoning.effort == "low",
          "reasoning.effort went upstream as reasoning_effort, and is echoed")

    resp = client.responses.create(model="gpt41", input="refuse")
    part = resp.output[0].content[0]
    check(len(resp.output) == 1 and part.type == "refusal" and part.refusal == "I can't help.",
          f"a refusal is a refusal part: {resp.output}")
    with client.responses.stream(model="gpt41", input="refuse") as stream:
        pieces = [e.delta for e in stream if e.type == "response.refusal.delta"]
        final = stream.get_final_response()
    check(pieces == ["I can't ", "help."] and final.output[0].content[0].refusal == "I can't help.",
          f"a streamed refusal: {pieces}, {final.output}")

    counted = client.responses.input_tokens.count(model="gpt41", input="Weather in Lyon?", tools=WEATHER)
    check(counted.object == "response.input_tokens" and counted.input_tokens > 5,
          f"responses.input_tokens.count() estimates: {counted.input_tokens}")

    parsed = client.responses.parse(model="gpt41", input="Weather?", text_format=Weather)
    check(parsed.output_parsed == Weather(city="Lyon", celsius=12), "responses.parse() with a text_format")
    check(RECEIVED[-1]["body"]["response_format"]["type"] == "json_schema", "text.format went as response_format")

    deltas = []
    with client.responses.stream(model="gpt41", input="stream") as stream:
        for event in stream:
            if event.type == "response.output_text.delta":
                deltas.append(event.delta)
        final = stream.get_final_response()
    check("".join(deltas) == "Hello SDK" and len(deltas) == 3, f"responses.stream() yields text deltas: {deltas}")
    check(final.output_text == "Hello SDK" and final.status == "completed", "the stream's final response")
    check(final.usage is not None and final.usage.total_tokens == 8, "the final response carries the usage")

    kinds = [e.type for e in client.responses.create(model="gpt41", input="stream", stream=True)]
    check(kinds[0] == "response.created" and kinds[-1] == "response.completed"
          and kinds.count("response.output_text.delta") == 3, f"create(stream=True) events: {kinds}")

    args = []
    with client.responses.stream(model="gpt41", input="Weather?", tools=WEATHER) as stream:
        for event in stream:
            if event.type == "response.function_call_arguments.delta":
                args.append(event.delta)
        final = stream.get_final_response()
    item = final.output[0]
    check(item.type == "function_call" and item.call_id == "call_sdk1" and "".join(args) == item.arguments
          and json.loads(item.arguments) == {"city": "Lyon"}, "a streamed function call")

    # The SDK reads leniently; its models, validated strictly, say whether a field is missing.
    raw = client.responses.with_raw_response.create(model="gpt41", input="Weather?", tools=WEATHER)
    Response.model_validate(raw.http_response.json())
    check(True, "a Response with a function call validates against the SDK's model")
    Response.model_validate(client.responses.with_raw_response.create(
        model="gpt41", input="hi").http_response.json())
    for body in [{"input": "stream"}, {"input": "Weather?", "tools": WEATHER}]:
        events = raw_events(client, dict(body, model="gpt41", stream=True))
        adapter = pydantic.TypeAdapter(ResponseStreamEvent)
        for event in events:
            adapter.validate_python(event)
        check(len(events) > 4, f"every stream event validates against the SDK's models ({len(events)} events)")

    try:
        client.responses.create(model="gpt41", input="more", previous_response_id="resp_123")
        check(False, "previous_response_id raises BadRequestError")
    except openai.BadRequestError as e:
        check(e.status_code == 400 and e.code == "invalid_request" and e.param == "previous_response_id"
              and "stateless" in e.message, "previous_response_id raises BadRequestError saying why")


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
        check((resp._request_id or "").startswith("req_"), f"with a request id: {resp._request_id}")
        try:
            client.chat.completions.create(model="gpt41", messages=user)
            check(False, "over rpm raises RateLimitError")
        except openai.RateLimitError as e:
            check(e.status_code == 429 and e.code == "rate_limit_exceeded", "over rpm raises RateLimitError")
            check(int(e.response.headers["retry-after"]) >= 1, "with Retry-After")


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/sigorest"
    with gateway(binary, FakeUpstream, models="gpt41, claude-h\nkimi\nembedding-small\n",
                 args=("-stream-keepalive", "1")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")

        ids = [m.id for m in client.models.list().data]
        check(ids == ["gpt41", "claude-h", "kimi", "embedding-small"],
              f"models.list() gives the whitelist in order: {ids}")
        one = client.models.retrieve("gpt-4.1")
        check(one.id == "gpt41" and one.owned_by == "mammouth",
              f"models.retrieve() finds a model by its upstream id: {one}")
        try:
            client.models.retrieve("no-such-model")
            check(False, "models.retrieve() of an unknown model raises")
        except openai.NotFoundError as e:
            check(e.body.get("code") == "model_not_found", f"models.retrieve() unknown: 404 model_not_found ({e.body})")

        emb = client.embeddings.create(model="embedding-small", input=["one", "two"])
        check(len(emb.data) == 2 and emb.data[1].embedding == [0.5, -0.25], "embeddings.create() answers")
        check(emb.usage.prompt_tokens == 3, "embeddings usage passes through")
        check(RECEIVED[-1]["path"] == "/v1/embeddings" and RECEIVED[-1]["body"]["model"] == "text-embedding-3-small",
              "the provider got the embeddings request with its model id")
        try:
            client.embeddings.create(model="gpt41", input="x")
            check(False, "a chat model on /v1/embeddings raises BadRequestError")
        except openai.BadRequestError as e:
            check(e.status_code == 400, "a chat model on /v1/embeddings raises BadRequestError")

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

        pieces = [e.choices[0].delta.content or "" for e in client.chat.completions.create(
            model="gpt41", messages=[{"role": "user", "content": "slowly"}], stream=True)]
        check("".join(pieces) == "Hello SDK",
              f"a stream with pauses longer than -stream-keepalive (keep-alive comments) arrives whole: {pieces}")
        with client.responses.stream(model="gpt41", input="slowly") as stream:
            final = stream.get_final_response()
        check(final.output_text == "Hello SDK", "and through responses.stream() too")

        tools = [{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER[0]["parameters"]}}]
        with client.chat.completions.stream(
                model="gpt41", messages=[{"role": "user", "content": "two calls, gemini style"}],
                tools=tools) as stream:
            final = stream.get_final_completion()
        calls = final.choices[0].message.tool_calls or []
        check([(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls]
              == [("call_g1", "get_weather", {"city": "Lyon"}), ("call_g2", "get_weather", {"city": "Oslo"})],
              f"chat.completions.stream() puts together calls streamed without index: {calls}")
        responses_checks(client)
    check_keys(binary)
    print("openai SDK compatibility: all checks passed")


if __name__ == "__main__":
    main()
