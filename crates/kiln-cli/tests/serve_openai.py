"""The official `openai` Python client against `kiln serve` (run by tests/serve.rs).

Usage: serve_openai.py BASE_URL API_KEY MODEL
Checks what the client parses: completions and chat, streamed and not, `stop`, `max_tokens`,
`seed`, usage, finish reasons, the models list, and the errors the client raises. Prints one
JSON line at the end with the ids of a greedy chat reply, which the Rust test compares with
`kiln run --chat`. Exits non-zero on the first failed check.
"""

import json
import sys

import openai
from openai import OpenAI

base, key, model = sys.argv[1], sys.argv[2], sys.argv[3]
client = OpenAI(base_url=base + "/v1", api_key=key, max_retries=0, timeout=120)


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what.split(':')[0]}", flush=True)


def stream_text(chunks):
    """Text, finish reason, usage and the first delta's role of a completion or chat stream."""
    text, finish, usage, role = "", None, None, None
    for c in chunks:
        if c.usage is not None:
            usage = c.usage
        for ch in c.choices:
            if hasattr(ch, "delta"):
                if role is None and ch.delta.role is not None:
                    role = ch.delta.role
                text += ch.delta.content or ""
            else:
                text += ch.text
            finish = ch.finish_reason or finish
    return text, finish, usage, role


models = client.models.list()
check([m.id for m in models.data] == [model], f"models.list: {models}")

# A completion from a text prompt, greedy.
c = client.completions.create(model=model, prompt="Hello, my name is", max_tokens=12, temperature=0)
check(c.object == "text_completion" and len(c.choices) == 1, f"completion shape: {c}")
check(c.choices[0].finish_reason in ("stop", "length"), f"finish_reason: {c}")
check(c.usage.prompt_tokens > 0 and 0 < c.usage.completion_tokens <= 12, f"usage: {c.usage}")
check(c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens, f"total: {c.usage}")

# The same, streamed, with usage: the same text, the same counts.
s = client.completions.create(
    model=model, prompt="Hello, my name is", max_tokens=12, temperature=0, stream=True,
    stream_options={"include_usage": True},
)
text, finish, usage, _ = stream_text(s)
check(text == c.choices[0].text, f"streamed text {text!r} == whole {c.choices[0].text!r}")
check(finish == c.choices[0].finish_reason, f"streamed finish_reason {finish}")
check(usage is not None and usage.completion_tokens == c.usage.completion_tokens, f"stream usage {usage}")

# max_tokens: exactly that many, finish_reason length.
c = client.completions.create(
    model=model, prompt=[5, 6, 7], max_tokens=5, temperature=0, extra_body={"ignore_eos": True},
)
check(c.choices[0].finish_reason == "length" and c.usage.completion_tokens == 5, f"max_tokens: {c}")

# stop: a piece of the greedy text ends the text before its first occurrence, across tokens.
long = client.completions.create(
    model=model, prompt=[40, 50, 60, 70], max_tokens=40, temperature=0, extra_body={"ignore_eos": True},
).choices[0].text
stop, at = None, None
for k in range(len(long) // 2, len(long) - 2):
    cand = long[k:k + 2]
    if "\ufffd" not in cand and cand.strip():
        stop, at = cand, long.find(cand)
        if at > 0:
            break
check(stop is not None, f"a stop string in {long!r}")
for streamed in (False, True):
    r = client.completions.create(
        model=model, prompt=[40, 50, 60, 70], max_tokens=40, temperature=0, stop=[stop, "\u0000never"],
        stream=streamed, extra_body={"ignore_eos": True},
    )
    text, finish, _, _ = stream_text(r) if streamed else (r.choices[0].text, r.choices[0].finish_reason, None, None)
    check(text == long[:at] and finish == "stop", f"stop {stop!r} (stream={streamed}): {text!r} vs {long[:at]!r}")
    check(stop not in text, "the stop string is not sent")

# seed: sampling at temperature 1 is reproducible with the same seed.
def sampled(seed):
    r = client.completions.create(
        model=model, prompt=[9, 8, 7], max_tokens=20, temperature=1.0, seed=seed,
        extra_body={"ignore_eos": True, "return_token_ids": True},
    )
    return r.choices[0].model_extra["token_ids"]

a, b, other = sampled(7), sampled(7), sampled(8)
check(len(a) == 20 and a == b, f"same seed, same tokens: {a} {b}")
check(a != other, f"another seed, other tokens: {a} {other}")

# Chat, whole and streamed.
messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
r = client.chat.completions.create(model=model, messages=messages, max_tokens=10, temperature=0)
check(r.object == "chat.completion" and r.choices[0].message.role == "assistant", f"chat shape: {r}")
check(r.choices[0].finish_reason in ("stop", "length"), f"chat finish_reason: {r}")
check(0 < r.usage.completion_tokens <= 10, f"chat usage: {r.usage}")
s = client.chat.completions.create(
    model=model, messages=messages, max_tokens=10, temperature=0, stream=True,
    stream_options={"include_usage": True},
)
text, finish, usage, role = stream_text(s)
check(role == "assistant", f"the first chunk's role: {role}")
check(text == r.choices[0].message.content, f"chat streamed {text!r} == whole {r.choices[0].message.content!r}")
check(finish == r.choices[0].finish_reason and usage.completion_tokens == r.usage.completion_tokens, "chat stream end")

# Errors as the client raises them.
try:
    client.completions.create(model=model, prompt="x", temperature="hot")
    check(False, "a string temperature is refused")
except openai.BadRequestError as e:
    check(e.status_code == 400 and e.param == "temperature", f"wrong type: {e}")
try:
    client.completions.create(model="no-such-model", prompt="x")
    check(False, "an unknown model is refused")
except openai.NotFoundError as e:
    check(e.code == "model_not_found", f"unknown model: {e}")
try:
    client.completions.create(model=model, prompt=[1] * 5000, max_tokens=1)
    check(False, "a prompt longer than the context is refused")
except openai.BadRequestError as e:
    check(e.code == "context_length_exceeded" and "5000 tokens" in str(e), f"too long: {e}")
try:
    OpenAI(base_url=base + "/v1", api_key="wrong", max_retries=0).models.list()
    check(False, "a wrong key is refused")
except openai.AuthenticationError as e:
    check(e.status_code == 401, f"wrong key: {e}")

# A greedy chat with one user message, for the comparison with `kiln run --chat`.
r = client.chat.completions.create(
    model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=12, temperature=0,
    extra_body={"return_token_ids": True},
)
print(json.dumps({"chat_token_ids": r.choices[0].model_extra["token_ids"],
                  "finish_reason": r.choices[0].finish_reason}), flush=True)
