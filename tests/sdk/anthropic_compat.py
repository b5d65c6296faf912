#!/usr/bin/env python3
"""Compatibility check with the official Anthropic Python SDK (what Claude Code is built on).

Starts a fake OpenAI-compatible upstream and the sigorest binary given as argv[1], then
drives sigorest's Messages API with `anthropic`: create, streams of text and of tool use, a
tool_result round trip, a structured output (messages.parse), count_tokens, models.list,
and the errors an SDK user meets
(NotFoundError for an unknown model, BadRequestError without max_tokens,
InternalServerError without the SDK's own retries). Exit status 0 when everything holds.
"""

import json
import sys
import time

import anthropic
import pydantic

from harness import Upstream, check, chunk, gateway, usage_chunk

WEATHER = {"name": "get_weather", "description": "Weather in a city",
           "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}


class FakeUpstream(Upstream):
    RECEIVED = []

    def answer(self, body):
        last = body["messages"][-1]
        model = body["model"]
        if last["role"] == "tool":
            text, calls = "tool said: " + last["content"], []
        elif "weather" in json.dumps(last["content"]):
            text, calls = "", [{"id": "call_w1", "type": "function",
                                "function": {"name": "get_weather", "arguments": '{"city": "Lyon"}'}}]
        else:
            said = last["content"] if isinstance(last["content"], str) else f"{len(last['content'])} parts"
            text, calls = ("Hello SDK" if body.get("stream") else "echo: " + said), []
        if body.get("response_format"):
            # Structured outputs: an answer that follows the schema.
            text, calls = json.dumps({"city": "Lyon", "celsius": 21}), []
        finish = "tool_calls" if calls else "stop"
        # A thinking model (GLM, Kimi, DeepSeek): its reasoning apart, before the answer.
        reasoning = ["Let me ", "see."] if "think" in json.dumps(last["content"]) else []
        if body.get("stream") and last["content"] == "slowly":
            # A model that pauses longer than -stream-keepalive between its pieces.
            events = [chunk(model, {"role": "assistant", "content": ""})]
            events += [chunk(model, {"content": p}) for p in ["Hel", "lo ", "SDK"]]
            events += [chunk(model, {}, "stop"), usage_chunk(model, 5, 3)]
            self.send_stream(events, gap=1.3)
            return
        if body.get("stream"):
            events = [chunk(model, {"role": "assistant", "content": ""})]
            events += [chunk(model, {"reasoning_content": p}) for p in reasoning]
            if text:
                events += [chunk(model, {"content": p}) for p in ["Hel", "lo ", "SDK"]]
            for c in calls:
                events.append(chunk(model, {"tool_calls": [{"index": 0, "id": c["id"], "type": "function",
                                                            "function": {"name": c["function"]["name"], "arguments": ""}}]}))
                for piece in ['{"city"', ': "Lyon"}']:
                    events.append(chunk(model, {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}))
            events.append(chunk(model, {}, finish))
            events.append(usage_chunk(model, 5, 3))
            self.send_stream(events, gap=0.03)
            return
        message = {"role": "assistant", "content": text or None}
        if reasoning:
            message["reasoning_content"] = "".join(reasoning)
        if calls:
            message["tool_calls"] = calls
        self.send_json({"id": "chatcmpl-1", "object": "chat.completion", "created": 1760000000, "model": model,
                        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
                        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}})


RECEIVED = FakeUpstream.RECEIVED


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/sigorest"
    with gateway(binary, FakeUpstream, args=("-stream-keepalive", "1")) as url:
        client = anthropic.Anthropic(base_url=url, api_key="unused")
        hi = [{"role": "user", "content": "hi"}]

        msg = client.messages.create(model="claude-h", max_tokens=100, system="Be brief.", messages=hi)
        check(msg.type == "message" and msg.role == "assistant", "messages.create() answers a message")
        check(msg.content[0].type == "text" and msg.content[0].text == "echo: hi", "the text comes back")
        check(msg.model == "claude-h" and msg.stop_reason == "end_turn", "model and stop_reason")
        check(msg.usage.input_tokens == 5 and msg.usage.output_tokens == 2, "usage is translated")
        sent = RECEIVED[-1]["body"]
        check(sent["messages"][0] == {"role": "system", "content": "Be brief."}, "system goes first")
        check(sent["model"] == "claude-3-5-haiku-20241022" and sent["max_tokens"] == 100, "model id and max_tokens")

        with client.messages.stream(model="claude-h", max_tokens=100, messages=hi) as stream:
            stamps, pieces = [], []
            for text in stream.text_stream:
                stamps.append(time.time())
                pieces.append(text)
            final = stream.get_final_message()
        check("".join(pieces) == "Hello SDK", f"text_stream yields the text: {pieces}")
        check(len(stamps) == 3 and stamps[-1] - stamps[0] > 0.04, f"pieces arrive as they are sent: {[round(s - stamps[0], 3) for s in stamps]}")
        check(final.usage.output_tokens == 3 and final.usage.input_tokens == 5, "a stream's usage")
        check(final.stop_reason == "end_turn", "a stream's stop_reason")
        check(RECEIVED[-1]["body"]["stream_options"] == {"include_usage": True}, "upstream asked for usage")

        slowly = [{"role": "user", "content": "slowly"}]
        with client.messages.stream(model="claude-h", max_tokens=100, messages=slowly) as stream:
            final = stream.get_final_message()
        # (The SDK skips ping events; tests/streaming.rs counts them.)
        check(final.content[0].text == "Hello SDK" and final.stop_reason == "end_turn",
              "a stream with pauses longer than -stream-keepalive (pings) arrives whole")

        think = [{"role": "user", "content": "think"}]
        thinking = {"type": "enabled", "budget_tokens": 1024}
        msg = client.messages.create(model="claude-h", max_tokens=2048, messages=think, thinking=thinking)
        check([b.type for b in msg.content] == ["thinking", "text"] and msg.content[0].thinking == "Let me see.",
              f"a provider's reasoning is a thinking block: {msg.content}")
        msg = client.messages.create(model="claude-h", max_tokens=2048, messages=think)
        check([b.type for b in msg.content] == ["text"], "and none without thinking enabled")
        with client.messages.stream(model="claude-h", max_tokens=2048, messages=think, thinking=thinking) as stream:
            thought = "".join(e.thinking for e in stream if e.type == "thinking")
            final = stream.get_final_message()
        check(thought == "Let me see." and [b.type for b in final.content] == ["thinking", "text"]
              and final.content[1].text == "Hello SDK", f"streamed thinking, then the text: {final.content}")

        ask = [{"role": "user", "content": "What is the weather in Lyon?"}]
        msg = client.messages.create(model="claude-h", max_tokens=100, messages=ask, tools=[WEATHER],
                                     tool_choice={"type": "any"})
        use = msg.content[-1]
        check(msg.stop_reason == "tool_use" and use.type == "tool_use", "a tool call is a tool_use block")
        check(use.name == "get_weather" and use.input == {"city": "Lyon"} and use.id == "call_w1",
              "with its name, parsed input and id")
        sent = RECEIVED[-1]["body"]
        check(sent["tools"][0]["function"]["name"] == "get_weather" and sent["tool_choice"] == "required",
              "tools and tool_choice translated")

        with client.messages.stream(model="claude-h", max_tokens=100, messages=ask, tools=[WEATHER]) as stream:
            final = stream.get_final_message()
        blocks = [b.type for b in final.content]
        check(blocks == ["tool_use"] and final.content[0].input == {"city": "Lyon"},
              f"a streamed tool call arrives whole: {final.content}")
        check(final.stop_reason == "tool_use", "a streamed tool call stops with tool_use")

        turn = ask + [{"role": "assistant", "content": [u.model_dump() for u in msg.content]},
                      {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id,
                                                    "content": "sunny, 21 C"}]}]
        msg = client.messages.create(model="claude-h", max_tokens=100, messages=turn, tools=[WEATHER])
        check(msg.content[0].text == "tool said: sunny, 21 C", "a tool_result round trip")
        sent = RECEIVED[-1]["body"]["messages"]
        check(sent[-2]["tool_calls"][0]["id"] == "call_w1" and sent[-1] == {
            "role": "tool", "tool_call_id": "call_w1", "content": "sunny, 21 C"}, "as tool_calls and a tool message")

        pdf = {"type": "document", "title": "a.pdf",
               "source": {"type": "base64", "media_type": "application/pdf", "data": "JVBERi0xLjQK"}}
        client.messages.create(model="claude-h", max_tokens=100, messages=[
            {"role": "user", "content": [pdf, {"type": "text", "text": "Sum it up."}]}])
        parts = RECEIVED[-1]["body"]["messages"][-1]["content"]
        check(parts[0] == {"type": "file", "file": {"file_data": "data:application/pdf;base64,JVBERi0xLjQK",
                                                    "filename": "a.pdf"}},
              f"a PDF document block goes as a file part: {parts[0]}")

        class Weather(pydantic.BaseModel):
            city: str
            celsius: int

        parsed = client.messages.parse(model="gpt41", max_tokens=100, output_format=Weather,
                                       metadata={"user_id": "user_" + "a" * 64 + "_account_x_session_y"},
                                       messages=[{"role": "user", "content": "Weather in Lyon as JSON"}])
        check(parsed.parsed_output == Weather(city="Lyon", celsius=21),
              f"messages.parse() reads a structured output: {parsed.parsed_output}")
        sent = RECEIVED[-1]["body"]
        fmt = sent.get("response_format") or {}
        check(fmt.get("type") == "json_schema" and fmt["json_schema"]["name"] == "output"
              and fmt["json_schema"]["strict"] is True
              and set(fmt["json_schema"]["schema"]["properties"]) == {"city", "celsius"},
              f"the SDK's output format goes as a strict response_format: {fmt}")
        check(len(sent["user"]) == 64, f"a user_id over 64 characters goes as 64: {sent['user']}")

        counted = client.messages.count_tokens(model="claude-h", messages=ask)
        check(counted.input_tokens > 0, f"count_tokens estimates: {counted.input_tokens}")

        ids = [m.id for m in client.models.list().data]
        check("claude-h" in ids, f"models.list() lists the gateway's models: {ids}")
        pages = client.models.list(limit=1)
        check(len(pages.data) == 1 and pages.has_more, f"models.list(limit=1) is a page of one: {pages}")
        paged = [m.id for m in client.models.list(limit=1)]
        check(paged == ids, f"iterating models.list(limit=1) pages through the same list: {paged}")
        one = client.models.retrieve("claude-h")
        check(one.id == "claude-h" and one.type == "model", f"models.retrieve() gives one model: {one}")
        check(one.max_input_tokens == 200000 and one.max_tokens == 8192,
              f"with the catalog's limits: {one.max_input_tokens}, {one.max_tokens}")
        try:
            client.models.retrieve("no-such-model")
            check(False, "models.retrieve() of an unknown model raises NotFoundError")
        except anthropic.NotFoundError as e:
            check(e.body["error"]["type"] == "not_found_error",
                  "models.retrieve() of an unknown model raises NotFoundError (not_found_error)")

        try:
            client.messages.create(model="no-such-model", max_tokens=10, messages=hi)
            check(False, "unknown model raises NotFoundError")
        except anthropic.NotFoundError as e:
            check(e.status_code == 404 and e.body["error"]["type"] == "not_found_error",
                  "unknown model raises NotFoundError (not_found_error)")

        try:
            client.post("/v1/messages", cast_to=object, body={"model": "claude-h", "messages": hi})
            check(False, "no max_tokens raises BadRequestError")
        except anthropic.BadRequestError as e:
            check("max_tokens" in e.message and e.body["error"]["type"] == "invalid_request_error",
                  "no max_tokens raises BadRequestError naming it")

        before, started = len(RECEIVED), time.time()
        try:
            client.messages.create(model="kimi", max_tokens=10, messages=hi)
            check(False, "an unconfigured provider raises InternalServerError")
        except anthropic.InternalServerError as e:
            check(e.status_code == 503 and "MOONSHOT_API_KEY" in e.message,
                  "an unconfigured provider raises InternalServerError naming the variable")
        check(time.time() - started < 1.0 and len(RECEIVED) == before, "and the SDK does not retry it")
    print("anthropic SDK compatibility: all checks passed")


if __name__ == "__main__":
    main()
