"""The official `openai` Python SDK as Ladder's client: a plain call and a streamed call.

Run by tests/openai_sdk.rs with the base URL of a running Ladder; exits non-zero on any failure.
"""
import os
import sys

import openai
from openai import OpenAI

base_url = sys.argv[1]
client = OpenAI(base_url=base_url, api_key=os.environ.get("LADDER_API_KEY", "unused-by-ladder-demo"))

# Plain call, routed by Ladder (`auto`), read with the SDK's typed objects.
raw = client.chat.completions.with_raw_response.create(
    model="auto",
    messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hello to the SDK test."}],
    max_tokens=64,
)
completion = raw.parse()
assert completion.object == "chat.completion", completion
assert completion.choices[0].message.role == "assistant"
assert completion.choices[0].message.content, "empty content"
assert completion.usage is not None and completion.usage.total_tokens > 0
assert raw.headers.get("x-ladder-decision-id", "").startswith("dec_"), dict(raw.headers)
print("plain:", completion.model, repr(completion.choices[0].message.content[:40]))

# Streamed call with usage, through a named catalogue model.
stream = client.chat.completions.create(
    model=sys.argv[2],
    messages=[{"role": "user", "content": [{"type": "text", "text": "Stream a short answer."}]}],
    stream=True,
    stream_options={"include_usage": True},
)
text, usage, finish = "", None, None
for chunk in stream:
    if chunk.usage is not None:
        usage = chunk.usage
    for choice in chunk.choices:
        text += choice.delta.content or ""
        finish = choice.finish_reason or finish
assert text, "no streamed text"
assert finish == "stop", finish
assert usage is not None and usage.completion_tokens > 0, usage
print("stream:", repr(text[:40]), usage.total_tokens)

# Errors surface as the SDK's typed exceptions (OpenAI error shape + status code).
try:
    client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    raise SystemExit("expected NotFoundError")
except openai.NotFoundError as e:
    assert e.status_code == 404 and e.code == "model_not_found", (e.status_code, e.code)
try:
    client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}], extra_headers={"x-ladder-task": "poetry"})
    raise SystemExit("expected BadRequestError")
except openai.BadRequestError as e:
    assert "creative_writing" in str(e), str(e)
print("openai SDK", openai.__version__, "ok")
