"""Batched decoding steps as they come, and in fixed shapes (replayed as CUDA graphs on a GPU), in one run.

The engine alone (no server): for 1, 8 and 30 clients, each asking for 3 options on its
own 300-token document, the same requests are stepped by an engine per `--cuda-graphs`
mode (`off`: the shapes they come in; `eager`: fixed shapes, no capture; `auto`: fixed
shapes replayed as captured CUDA graphs, on a CUDA device only), greedily, so that every
mode must write the same tokens (the table says whether they did). Reports the median ms
per step after the first steps, tokens/s, and how many graphs were captured and what
the steps that captured them took. Prints a markdown table; --json writes the figures.

    python bench/graphs.py --device cuda --model bench/.models/gpt2-large-random --dtype float16
    python bench/graphs.py                          # this CPU: off against eager (no graphs here)
"""
import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

sys.path.insert(0, str(ROOT / "bench"))
import first_option as single  # noqa: E402  (its documents)
from webapp.config import cache_dir  # noqa: E402
from webapp.engine import Engine  # noqa: E402
from webapp.models import load_model, pick_device, pick_dtype, resolve_model  # noqa: E402
from webapp.protocol import SamplingSettings  # noqa: E402

N = 3  # options per request


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--clients", default="1,8,30")
    parser.add_argument("--tokens", type=int, default=300, help="document length in tokens")
    parser.add_argument("--steps", type=int, default=24, help="decoding steps per request")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def synchronize(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def setting_up(engine):
    """How many graphs the engine has captured and first replays it has checked (steps that cost more), so far."""
    return engine.fixed.captures + engine.fixed.checks if engine.fixed else 0


def measure(engine, texts, steps, device):
    """Step every request `steps` times together; per step (ms, graphs captured or checked in it), the tokens."""
    settings = SamplingSettings(n=N, temperature=0, length=steps + 1, stop_at="length", max_time=600)
    generations = [engine.start(text, settings)[0] for text in texts]
    timed = []
    for _ in range(steps):
        before = setting_up(engine)
        synchronize(device)
        began = time.perf_counter()
        engine.step_many(generations)
        synchronize(device)
        timed.append(((time.perf_counter() - began) * 1000, setting_up(engine) - before))
    for generation in generations:
        engine.cancel(generation)
    return timed, [[option.tokens for option in generation.options] for generation in generations]


def main():
    args = parse_args()
    device = pick_device(args.device)
    spec = resolve_model(args.model)
    dtype = pick_dtype(args.dtype, device, spec)
    loaded = load_model(spec, device=device, dtype=dtype, cache_root=cache_dir({}))
    modes = ["off", "eager"] + (["auto"] if device.startswith("cuda") else [])
    engines = {mode: Engine(loaded, graphs=mode) for mode in modes}
    if engines["eager"].fixed is None:
        raise SystemExit(f"{dtype} on this CPU: our C step takes the batched steps, not fixed shapes; "
                         "try --dtype bfloat16 or float32")
    for engine in engines.values():
        engine.warm_up()
    rows = []
    for count in map(int, args.clients.split(",")):
        texts = [single.document(loaded.tokenizer, args.tokens, index) for index in range(count)]
        row = {"clients": count, "modes": {}}
        written = {}
        for mode, engine in engines.items():
            timed, written[mode] = measure(engine, texts, args.steps, device)
            steady = [ms for ms, set_up in timed[2:] if set_up == 0]
            setting_up_ms = [ms for ms, set_up in timed if set_up]
            median = statistics.median(steady)
            row["modes"][mode] = {"ms_per_step": median, "tokens_per_s": count * N * 1000 / median,
                                  "captures_and_checks": sum(set_up for _, set_up in timed),
                                  "setting_up_ms": sum(setting_up_ms)}
        row["same_tokens"] = all(tokens == written["off"] for tokens in written.values())
        rows.append(row)
        print(f"{count} clients done", file=sys.stderr)
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else "CPU"
    figures = {"model": loaded.name, "device": device, "device_name": name, "dtype": dtype, "tokens": args.tokens,
               "steps": args.steps, "rows": rows}
    print(markdown(figures, modes))
    if "auto" in engines and engines["auto"].fixed.failure:
        print(f"\nCUDA graphs were given up: {engines['auto'].fixed.failure}")
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))


def markdown(figures, modes):
    lines = [f"{figures['model']} ({figures['dtype']}) on {figures['device']} ({figures['device_name']}), {N} "
             f"options a request on {figures['tokens']}-token documents, greedy; median ms per step after two", "",
             "| clients | " + " | ".join(f"{mode}: ms/step, tokens/s" for mode in modes)
             + " | graphs captured and first replays checked (ms of those steps) | same tokens |",
             "|---|" + "---|" * len(modes) + "---|---|"]
    for row in figures["rows"]:
        cells = [f"{row['modes'][mode]['ms_per_step']:.1f}, {row['modes'][mode]['tokens_per_s']:.0f}"
                 for mode in modes]
        graphs = row["modes"].get("auto")
        captured = f"{graphs['captures_and_checks']} ({graphs['setting_up_ms']:.0f})" if graphs else "no CUDA"
        lines.append(f"| {row['clients']} | " + " | ".join(cells) + f" | {captured} | "
                     f"{'yes' if row['same_tokens'] else 'NO'} |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
