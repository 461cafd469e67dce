"""Weight formats on this CPU: decoding step, prefill and quality (perplexity) per format, float32 as the reference.

For each model (`--model`: the embedded one, and a GPT-2-large architecture with random
weights saved once under bench/.models/, same shapes and compute as the real one) and each
format (`--formats`), the engine itself (no server) measures:
- a decoding step of 3 options on a 300-token document (median of --steps steps),
- the prefill of a 211-token prompt (llama.cpp's figure on this machine: 858 ms),
- the embedded model's perplexity on a fixed text (random weights have no quality to lose),
  read whole (the prompt's path: dense layers) and one token at a time as 3 options of a
  request (the decoding steps' path: in int4, the C step of decoder_step.py).
The format `int4-aten` is int4 with PyTorch's packed kernels instead of ours (native.py), for
the two side by side.
In the same run, the baseline: one plain float32 `generate(num_return_sequences=3)` step
(no cache reuse, Conv1D layers as they ship). Where llama-cpp-python is installed (optional:
`pip install llama-cpp-python==0.3.36`, a source build), the embedded model's rows end with
llama.cpp itself on the same GGUF file and thread count: one sequence's decoding step and
the same prefill. Prints a markdown table; --json writes it.

    python bench/formats.py                         # embedded model: float32, bfloat16, int8, int4, int4-aten
    python bench/formats.py --model gpt2-large-random
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from webapp.accel import native  # noqa: E402
from webapp.accel.cpu import cpu_flags  # noqa: E402
from webapp.config import cache_dir  # noqa: E402
from webapp.generation import kvcache, shared_prompt
from webapp.generation.engine import Engine  # noqa: E402
from webapp.models.loading import load_model, resolve_model  # noqa: E402
from webapp.web.protocol import SamplingSettings  # noqa: E402

RANDOM_GPT2_LARGE = ROOT / "bench" / ".models" / "gpt2-large-random"
QUALITY_TEXT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined "
    "movable metal type, oil-based ink and a wooden press adapted from those used to make wine. Within fifty "
    "years printing shops had opened in more than two hundred cities across Europe, and the price of books "
    "fell so far that ordinary merchants could afford them. Scholars argue about how quickly ideas spread as a "
    "result, but few doubt that the press changed how people learned to read, argued about religion and kept "
    "records of trade."
)
PARAGRAPH = ("The river ran quietly past the old mill, where the children of the village gathered every "
             "summer to watch the boats and tell each other stories about the people who lived upstream. ")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", action="append", help="embedded (default), gpt2-large-random, or a directory")
    parser.add_argument("--formats", default="float32,bfloat16,int8,int4,int4-aten")
    parser.add_argument("--steps", type=int, default=20, help="decoding steps timed per format")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    return parser.parse_args()


def model_location(name):
    """A --model value for load_model; builds the random GPT-2-large folder the first time."""
    if name != "gpt2-large-random":
        return name
    if not (RANDOM_GPT2_LARGE / "config.json").is_file():
        from transformers import GPT2Config, GPT2LMHeadModel

        tokenizer = load_model(resolve_model("embedded"), "cpu", "float32", cache_root=cache_dir({})).tokenizer
        print("building a GPT-2-large architecture with random weights (once; 3 GB)", file=sys.stderr)
        torch.manual_seed(0)
        config = GPT2Config(vocab_size=len(tokenizer), n_positions=1024, n_embd=1280, n_layer=36, n_head=20,
                            bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
        GPT2LMHeadModel(config).save_pretrained(RANDOM_GPT2_LARGE)
        tokenizer.save_pretrained(RANDOM_GPT2_LARGE)
    return str(RANDOM_GPT2_LARGE)


def document(tokenizer, tokens):
    ids = tokenizer(PARAGRAPH * (tokens // 20 + 2), add_special_tokens=False)["input_ids"][:tokens]
    return tokenizer.decode(ids)


def time_steps(engine, text, steps):
    """Median ms of a 3-option decoding step after the prompt is read."""
    settings = SamplingSettings(n=3, length=steps + 1, stop_at="length", seed=0, max_time=600)
    generation, _ = engine.start(text, settings)
    times = []
    for _ in range(steps):
        began = time.perf_counter()
        engine.step(generation)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def time_prefill(engine, text, trials=3):
    """Median ms to read a prompt and sample the first tokens (no prefix cache)."""
    settings = SamplingSettings(n=3, length=1, stop_at="length", seed=0)
    times = []
    for _ in range(trials):
        began = time.perf_counter()
        engine.start(text, settings)
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times)


def time_baseline(loaded, text, steps):
    """ms per step of the lesson's call: generate(num_return_sequences=3) in float32, as the model ships."""
    ids = loaded.tokenizer(text, return_tensors="pt", add_special_tokens=False)
    began = time.perf_counter()
    with torch.inference_mode():
        loaded.model.generate(**ids, do_sample=True, num_return_sequences=3, max_new_tokens=steps, min_new_tokens=steps,
                              pad_token_id=min(loaded.eos_ids))
    return (time.perf_counter() - began) * 1000 / steps


def load_format(spec, weight_format):
    """The model in `weight_format`; `int4-aten` is int4 packed for PyTorch's kernels rather than ours."""
    if weight_format != "int4-aten":
        return load_model(spec, "cpu", weight_format, cache_root=cache_dir({}))
    switch = os.environ.get(native.ENABLED_VARIABLE)
    os.environ[native.ENABLED_VARIABLE] = "0"
    native.library.cache_clear()
    try:
        return load_model(spec, "cpu", "int4", cache_root=cache_dir({}))
    finally:
        os.environ.pop(native.ENABLED_VARIABLE)
        if switch is not None:
            os.environ[native.ENABLED_VARIABLE] = switch
        native.library.cache_clear()


def stepwise_perplexity(engine, text, rows=3):
    """Perplexity of `text` read one token at a time as `rows` options of one request: the decoding steps' path.

    Each step feeds every option the text's next token, through the engine's forward pass
    with OptionRows (each option sees the first token and its own columns), as its steps do.
    """
    ids = engine.tokenizer(text, return_tensors="pt", add_special_tokens=False).input_ids
    with torch.inference_mode():
        out = engine.model(input_ids=ids[:, :1], use_cache=True)
        cache, seen = kvcache.growing(out.cache), torch.ones((1, rows, 1), dtype=torch.bool)
        total = torch.nn.functional.cross_entropy(out.logits[:, -1].float(), ids[0, 1:2])
        for position in range(1, ids.shape[1] - 1):
            visible = torch.cat([seen, torch.eye(rows, dtype=torch.bool)[None]], dim=2)  # and its own new column
            out = engine._forward(input_ids=ids[:, position:position + 1].expand(rows, 1), cache=cache,
                                  use_cache=True, position_ids=torch.full((rows, 1), position),
                                  option_rows=shared_prompt.OptionRows(visible))
            cache, seen = out.cache, visible
            total += torch.nn.functional.cross_entropy(out.logits[:1, -1].float(), ids[0, position + 1:position + 2])
    return float(torch.exp(total / (ids.shape[1] - 1)))


def time_llama_cpp(text_300, text_211, steps):
    """llama.cpp on the embedded GGUF, in a process of its own: (ms per token, prefill ms), or None.

    A separate process, because a llama.cpp build can crash the process on a CPU it
    misjudges (this machine's default build does, reading batches with AMX): the peer is
    optional, the benchmark goes on without it and says why.
    """
    from importlib.util import find_spec

    if find_spec("llama_cpp") is None:  # looked up, not imported: its native library loads in the child only
        return None
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    from multiprocessing import get_context

    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        try:
            return pool.submit(_llama_cpp_figures, text_300, text_211, steps, torch.get_num_threads()).result()
        except BrokenProcessPool:
            print("llama.cpp crashed on this machine; its row is left out", file=sys.stderr)
            return None


def _llama_cpp_figures(text_300, text_211, steps, threads):
    """One sequence's decoding step after a 300-token prompt, and the prefill of 211 tokens (median ms)."""
    from llama_cpp import Llama

    from webapp.models.loading import embedded_gguf_path

    llm = Llama(model_path=str(embedded_gguf_path()), n_ctx=1024, n_threads=threads, n_batch=512, verbose=False)

    def tokens(text):
        return llm.tokenize(text.encode(), add_bos=False)

    prefills = []
    for _ in range(3):
        llm.reset()
        began = time.perf_counter()
        llm.eval(tokens(text_211))
        prefills.append((time.perf_counter() - began) * 1000)
    llm.reset()
    llm.eval(tokens(text_300))
    times = []
    for _ in range(steps):
        following = int(llm.scores[llm.n_tokens - 1].argmax())  # greedy: the cost is the model's step, not sampling
        began = time.perf_counter()
        llm.eval([following])
        times.append((time.perf_counter() - began) * 1000)
    return statistics.median(times), statistics.median(prefills)


def main():
    args = parse_args()
    rows = []
    for name in args.model or ["embedded"]:
        location = model_location(name)
        spec = resolve_model(location)
        reference = load_model(spec, "cpu", "float32", cache_root=cache_dir({}))
        text_300 = document(reference.tokenizer, 300)
        text_211 = document(reference.tokenizer, 211)
        baseline = time_baseline(reference, text_300, min(args.steps, 8))
        reference_ppl = None
        for weight_format in args.formats.split(","):
            loaded = reference if weight_format == "float32" else load_format(spec, weight_format)
            engine = Engine(loaded)
            engine.warm_up()
            step = time_steps(engine, text_300, args.steps)
            prefill = time_prefill(engine, text_211)
            perplexity = engine.score(QUALITY_TEXT)[0]["perplexity"] if name == "embedded" else None
            stepwise = stepwise_perplexity(engine, QUALITY_TEXT) if name == "embedded" else None
            reference_ppl = reference_ppl or perplexity
            rows.append({"model": name, "format": weight_format, "step_ms": round(step, 1),
                         "baseline_step_ms": round(baseline, 1), "speedup": round(baseline / step, 2),
                         "tokens_per_s": round(3 * 1000 / step, 1), "prefill_211_ms": round(prefill, 1),
                         "perplexity": round(perplexity, 3) if perplexity else None,
                         "perplexity_change": (f"{100 * (perplexity / reference_ppl - 1):+.2f} %"
                                               if perplexity and reference_ppl else None),
                         "stepwise_perplexity": round(stepwise, 3) if stepwise else None})
            print(json.dumps(rows[-1]), file=sys.stderr)
            if loaded is not reference:
                del engine, loaded
        peer = time_llama_cpp(text_300, text_211, args.steps) if name == "embedded" else None
        if peer:
            step, prefill = peer
            rows.append({"model": name, "format": "llama.cpp, 1 sequence", "step_ms": round(step, 1),
                         "baseline_step_ms": round(baseline, 1), "speedup": None,
                         "tokens_per_s": round(1000 / step, 1), "prefill_211_ms": round(prefill, 1),
                         "perplexity": None, "perplexity_change": None, "stepwise_perplexity": None})
            print(json.dumps(rows[-1]), file=sys.stderr)
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8"})
    print(f"\nCPU: {torch.get_num_threads()} threads, flags {' '.join(flags)}; torch {torch.__version__}\n")
    print("| model | format | 3-option step (ms) | baseline step, fp32 generate (ms) | speed-up | tokens/s "
          "| prefill 211 tokens (ms) | perplexity | vs float32 | perplexity, one token at a time |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        speedup = f"{r['speedup']}×" if r["speedup"] else "–"
        print(f"| {r['model']} | {r['format']} | {r['step_ms']} | {r['baseline_step_ms']} | {speedup} "
              f"| {r['tokens_per_s']} | {r['prefill_211_ms']} | {r['perplexity'] or '–'} "
              f"| {r['perplexity_change'] or '–'} | {r['stepwise_perplexity'] or '–'} |")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cpu_flags": flags, "torch": torch.__version__}, indent=2))


if __name__ == "__main__":
    main()
