#!/usr/bin/env python3
"""A bounded load generator for OpenAI-compatible servers on localhost (standard library only).

    load-client.py prompts BASE_URL PROMPTS.json --tokens N --count C --text FILE
        writes C chat prompts of about N tokens each (distinct slices of FILE, cut to length with
        the server's /tokenize and /detokenize, which llama-server has)
    load-client.py run BASE_URL PROMPTS.json --label L --concurrency K --max-tokens M
        [--extra JSON] [--pid PID] [--poll METRIC]
        sends a short request (not counted), then every prompt as a streamed chat request, K at a
        time, each answer M tokens long (ignore_eos), and prints one JSON line: generated tokens/s over the whole run, time to first
        token and inter-token latency (p50, p99), errors, the server's peak RSS, and the most requests
        the server ran at once (METRIC, sampled from /metrics).

Every request has a timeout, and the run ends when every request has ended.
"""
import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from urllib.parse import urlparse

TIMEOUT_S = 1800


def connect(base):
    url = urlparse(base)
    if url.hostname not in ("127.0.0.1", "localhost"):
        sys.exit(f"{base}: this load generator talks to localhost only")
    return http.client.HTTPConnection(url.hostname, url.port, timeout=TIMEOUT_S)


def post_json(base, path, body):
    conn = connect(base)
    conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
    reply = conn.getresponse()
    data = reply.read()
    conn.close()
    if reply.status != 200:
        sys.exit(f"{path}: {reply.status} {data[:300]!r}")
    return json.loads(data)


def make_prompts(args):
    text = open(args.text, encoding="utf-8").read()
    tokens = post_json(args.base, "/tokenize", {"content": text})["tokens"]
    need = args.tokens * args.count
    if len(tokens) < need:
        sys.exit(f"{args.text} holds {len(tokens)} tokens; {need} are needed")
    prompts = []
    for i in range(args.count):
        piece = tokens[i * args.tokens:(i + 1) * args.tokens]
        prompts.append(post_json(args.base, "/detokenize", {"tokens": piece})["content"])
    json.dump(prompts, open(args.prompts, "w"))


def percentile(values, p):
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


def one_request(args, prompt, extra, out):
    body = {
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": args.max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    record = {"error": None, "ttft": None, "gaps": [], "tokens": 0, "prompt_tokens": None}
    start = time.perf_counter()
    try:
        conn = connect(args.base)
        conn.request("POST", "/v1/chat/completions", json.dumps(body),
                     {"Content-Type": "application/json"})
        reply = conn.getresponse()
        if reply.status != 200:
            record["error"] = f"{reply.status}: {reply.read()[:200]!r}"
            out.append(record)
            return
        last = None
        chunks = 0
        while True:
            line = reply.readline()
            if not line:
                break
            line = line.strip()
            if not line.startswith(b"data: "):
                continue
            payload = line[6:]
            if payload == b"[DONE]":
                break
            event = json.loads(payload)
            if event.get("usage"):
                record["tokens"] = event["usage"].get("completion_tokens", 0)
                record["prompt_tokens"] = event["usage"].get("prompt_tokens")
            choices = event.get("choices") or []
            if choices and choices[0].get("delta", {}).get("content"):
                now = time.perf_counter()
                if last is None:
                    record["ttft"] = now - start
                else:
                    record["gaps"].append(now - last)
                last = now
                chunks += 1
        conn.close()
        record["tokens"] = record["tokens"] or chunks
        if record["tokens"] != args.max_tokens:
            record["error"] = f"{record['tokens']} tokens, not {args.max_tokens}"
    except Exception as e:  # noqa: BLE001 - every failure is counted and shown
        record["error"] = repr(e)
    out.append(record)


def peak_rss_mib(pid):
    if not pid:
        return None
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return None


def poll_running(args, stop, peak):
    while not stop.is_set():
        try:
            conn = connect(args.base)
            conn.request("GET", "/metrics")
            text = conn.getresponse().read().decode()
            conn.close()
            for line in text.splitlines():
                if line.startswith(args.poll):
                    peak[0] = max(peak[0], float(line.split()[-1]))
        except OSError:
            pass
        stop.wait(0.2)


def run(args):
    prompts = json.load(open(args.prompts))
    extra = json.loads(args.extra) if args.extra else {}
    records, slots = [], threading.Semaphore(args.concurrency)
    stop, peak = threading.Event(), [0.0]
    poller = threading.Thread(target=poll_running, args=(args, stop, peak)) if args.poll else None
    if poller:
        poller.start()

    # A short request first, not counted: the servers are timed warm.
    warm = argparse.Namespace(**{**vars(args), "max_tokens": 4})
    one_request(warm, prompts[0][:200], extra, [])

    def worker(prompt):
        with slots:
            one_request(args, prompt, extra, records)

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(p,)) for p in prompts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    stop.set()
    if poller:
        poller.join()
    ok = [r for r in records if not r["error"]]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    gaps = [g for r in ok for g in r["gaps"]]
    ms = lambda v: None if v is None else round(v * 1000, 1)  # noqa: E731
    print(json.dumps({
        "label": args.label,
        "requests": len(records),
        "errors": len(records) - len(ok),
        "first_error": next((r["error"] for r in records if r["error"]), None),
        "prompt_tokens": statistics.mean(r["prompt_tokens"] for r in ok if r["prompt_tokens"])
        if any(r["prompt_tokens"] for r in ok) else None,
        "generated_tokens": sum(r["tokens"] for r in ok),
        "wall_s": round(wall, 2),
        "tokens_per_s": round(sum(r["tokens"] for r in ok) / wall, 2),
        "ttft_p50_ms": ms(percentile(ttft, 50)),
        "ttft_p99_ms": ms(percentile(ttft, 99)),
        "itl_p50_ms": ms(percentile(gaps, 50)),
        "itl_p99_ms": ms(percentile(gaps, 99)),
        "peak_rss_mib": peak_rss_mib(args.pid),
        "most_running": peak[0] if args.poll else None,
    }), flush=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["prompts", "run"])
    parser.add_argument("base")
    parser.add_argument("prompts")
    parser.add_argument("--tokens", type=int)
    parser.add_argument("--count", type=int)
    parser.add_argument("--text")
    parser.add_argument("--label", default="")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("--extra")
    parser.add_argument("--pid", type=int)
    parser.add_argument("--poll")
    args = parser.parse_args()
    args.base = args.base.rstrip("/")
    make_prompts(args) if args.mode == "prompts" else run(args)


if __name__ == "__main__":
    main()
