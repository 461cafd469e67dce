"""Time from TAB to the first option text, over a real socket, beside the lesson's baseline.

Starts `python -m webapp --model MODEL` on a loopback port (or uses --url), sends
`suggest` for a document of about --tokens tokens (a new one per trial, or with
--growing one that grows by a few words before each TAB, so the server's prompt
cache can work), and reports per trial the time
to the first `delta`, the time to `done`, ms per decoding step and tokens/s. In the
same run, the baseline is the lesson-style call on the same model and prompt:
`model.generate(do_sample=True, num_return_sequences=n)`, which shows nothing until
every option is complete. Prints a markdown table; `--json` writes the figures.

    python bench/first_option.py                  # embedded model, 300 tokens
    python bench/first_option.py --tokens 900 --trials 20
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import requests
import socketio

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

PARAGRAPH = ("The river ran quietly past the old mill, where the children of the village gathered every "
             "summer to watch the boats and tell each other stories about the people who lived upstream. ")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--dtype", default="float32", help="weight format for server and baseline alike")
    parser.add_argument("--url", help="use a running server instead of starting one")
    parser.add_argument("--tokens", type=int, default=300, help="document length in tokens")
    parser.add_argument("--trials", type=int, default=10)
    parser.add_argument("--n", type=int, default=3, help="options per TAB")
    parser.add_argument("--length", type=int, default=12, help="new tokens per option")
    parser.add_argument("--primed", action="store_true",
                        help="send `prime` first and press TAB once the server has read the text (as after a pause)")
    parser.add_argument("--growing", action="store_true",
                        help="one document that grows by a few words before each TAB, as when writing")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def load_tokenizer_and_model(name, dtype, device="cpu"):
    from webapp.config import cache_dir
    from webapp.models.loading import load_model, resolve_model

    return load_model(resolve_model(name), device=device, dtype=dtype, cache_root=cache_dir({}))


def document(tokenizer, tokens, trial):
    """A document of exactly `tokens` tokens, different per trial (nothing can be reused)."""
    text = f"Story {trial}. " + PARAGRAPH * (tokens // 20 + 2)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:tokens]
    return tokenizer.decode(ids)


def start_server(model, dtype, device="cpu", flags=()):
    """A server on a free loopback port (`flags`: more of its command-line flags); (process, url) once ready."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    process = subprocess.Popen([sys.executable, "-m", "webapp", "--model", model, "--dtype", dtype, "--device", device,
                                "--port", str(port), "--log-level", "WARNING", *flags], cwd=ROOT,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               env={**os.environ, "HF_HUB_OFFLINE": "1"})
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if requests.get(url + "/healthz", timeout=1).json()["ready"]:
                return process, url
        except requests.RequestException:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("the server did not become ready")


def connect(url):
    """A real Socket.IO client that records (time, event, payload) of all it receives, and a Condition to wait on."""
    client = socketio.Client()
    arrived = threading.Condition()
    events = []

    def record(event, data):
        with arrived:
            events.append((time.perf_counter(), event, data))
            arrived.notify_all()

    client.on("*", record)
    client.connect(url, transports=["websocket"])
    return client, events, arrived


def measure_socket(url, texts, n, length, primed=False):
    """One real Socket.IO client; returns per-trial timings."""
    client, events, arrived = connect(url)
    rows = []
    for i, text in enumerate(texts):
        events.clear()
        request_id = f"bench-{i}"
        settings = {"n": n, "length": length, "stop_at": "length", "seed": i}
        if primed:  # the writer paused: the server reads the text, then TAB comes
            prime(client, events, arrived, f"prime-{i}", text, settings)
            events.clear()
        sent = time.perf_counter()
        client.emit("suggest", {"id": request_id, "text": text, "settings": settings})
        with arrived:
            arrived.wait_for(lambda rid=request_id: any(e == "done" and d["id"] == rid for _, e, d in events), 120)
        deltas = [t for t, e, d in events if e == "delta"]
        done_at, done = next((t, d) for t, e, d in events if e == "done")
        new_tokens = done["stats"]["new_tokens"]
        rows.append({
            "first_delta_ms": (deltas[0] - sent) * 1000,
            "complete_ms": (done_at - sent) * 1000,
            "ms_per_step": (done_at - deltas[0]) * 1000 / max(1, done["stats"]["steps"] - 1),
            "tokens_per_s": new_tokens / (done_at - sent),
        })
    client.disconnect()
    return rows


def prime(client, events, arrived, request_id, text, settings, timeout=120):
    """Send the text as a pause in typing would, and wait until the server has read it."""
    client.emit("prime", {"id": request_id, "text": text, "settings": settings})
    with arrived:
        arrived.wait_for(lambda: any(e == "primed" and d["id"] == request_id for _, e, d in events), timeout)


def measure_baseline(loaded, texts, n, length):
    """The lesson's call: generate() with num_return_sequences; its first text is its last.

    Its time per step is (t(length tokens) - t(1 token)) / (length - 1): decoding only.
    """
    import torch

    def generate(ids, tokens, seed):
        torch.manual_seed(seed)
        started = time.perf_counter()
        out = loaded.model.generate(**ids, do_sample=True, num_return_sequences=n, max_new_tokens=tokens,
                                    min_new_tokens=tokens, top_k=40, top_p=0.95, temperature=0.8,
                                    pad_token_id=min(loaded.eos_ids))
        if out.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - started, (out.shape[1] - ids["input_ids"].shape[1]) * n

    rows = []
    for i, text in enumerate(texts):
        ids = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=False).to(loaded.device)
        one, _ = generate(ids, 1, i)
        elapsed, new_tokens = generate(ids, length, i)
        rows.append({"first_delta_ms": elapsed * 1000, "complete_ms": elapsed * 1000,
                     "ms_per_step": (elapsed - one) * 1000 / (length - 1), "tokens_per_s": new_tokens / elapsed})
    return rows


def summarize(rows):
    def pct(values, q):
        values = sorted(values)
        return values[min(len(values) - 1, round(q * (len(values) - 1)))]

    keys = rows[0].keys()
    return {k: {"p50": statistics.median(r[k] for r in rows), "p95": pct([r[k] for r in rows], 0.95)} for k in keys}


def machine():
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main():
    args = parse_args()
    loaded = load_tokenizer_and_model(args.model, args.dtype)
    if args.growing:  # the same tab keeps writing: each TAB adds a few words to the document before it
        base = document(loaded.tokenizer, args.tokens, 0)
        texts = [base + "".join(f" and then the boat number {k} came" for k in range(trial)) for trial in
                 range(args.trials)]
    else:
        texts = [document(loaded.tokenizer, args.tokens, trial) for trial in range(args.trials)]
    process = None
    url = args.url
    if not url:
        process, url = start_server(args.model, args.dtype)
    try:
        measure_socket(url, texts[:1], args.n, args.length)  # warm the connection
        served = summarize(measure_socket(url, texts, args.n, args.length, args.primed))
    finally:
        if process:
            process.terminate()
            process.wait()
    baseline = summarize(measure_baseline(loaded, texts, args.n, args.length))

    print(f"\nMachine: {machine()}")
    print(f"Model: {loaded.name} ({loaded.dtype}); document {args.tokens} tokens"
          f"{', growing before each TAB' if args.growing else ''}{', primed' if args.primed else ''}; "
          f"n={args.n}; length {args.length}; "
          f"{args.trials} trials\n")
    print("| figure | TabWrite p50 | TabWrite p95 | baseline generate() p50 | ratio (baseline / TabWrite) |")
    print("|---|---|---|---|---|")
    labels = {"first_delta_ms": "TAB to first option text (ms)", "complete_ms": "TAB to complete options (ms)",
              "ms_per_step": "time per decoding step (ms)", "tokens_per_s": "throughput (tokens/s)"}
    for key, label in labels.items():
        ours, theirs = served[key]["p50"], baseline[key]["p50"]
        ratio = ours / theirs if key == "tokens_per_s" else theirs / ours
        print(f"| {label} | {ours:.1f} | {served[key]['p95']:.1f} | {theirs:.1f} | {ratio:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "args": {k: str(v) for k, v in vars(args).items()},
                                         "tabwrite": served, "baseline": baseline}, indent=2))


if __name__ == "__main__":
    main()
