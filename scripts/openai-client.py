#!/usr/bin/env python3
"""The official `openai` client (PyPI) against a running `spectra serve`: completions and chat, plain
and streamed, with a per-request KV policy. Prints what came back as one JSON object.

    python3 scripts/openai-client.py http://127.0.0.1:8080 [PROMPT]
"""
import json
import sys

from openai import OpenAI

base = sys.argv[1].rstrip("/")
prompt = sys.argv[2] if len(sys.argv) > 2 else "hello world"
client = OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0, timeout=120)
model = client.models.list().data[0].id
kv = {"kv": {"policy": {"type": "StreamingLlm", "cfg": {"sinks": 4}}, "budget": 64}}

plain = client.completions.create(model=model, prompt=prompt, max_tokens=12, temperature=0)
streamed = client.completions.create(
    model=model, prompt=prompt, max_tokens=12, temperature=0, stream=True,
    stream_options={"include_usage": True},
)
streamed_chunks = list(streamed)

messages = [{"role": "user", "content": prompt}]
chat = client.chat.completions.create(
    model=model, messages=messages, max_tokens=8, temperature=0, extra_body=kv
)
chat_stream = client.chat.completions.create(
    model=model, messages=messages, max_tokens=8, temperature=0, stream=True, extra_body=kv
)
chat_chunks = list(chat_stream)

print(json.dumps({
    "model": model,
    "completion": plain.choices[0].text,
    "completion_finish": plain.choices[0].finish_reason,
    "completion_usage": plain.usage.completion_tokens,
    "completion_streamed": "".join(c.choices[0].text for c in streamed_chunks if c.choices),
    "completion_streamed_usage": streamed_chunks[-1].usage.completion_tokens,
    "chat": chat.choices[0].message.content,
    "chat_kv": chat.to_dict().get("kv"),
    "chat_streamed": "".join(
        c.choices[0].delta.content or "" for c in chat_chunks if c.choices
    ),
}))
