"""Activation harvesting speed on the built-in model, with and without early stopping.

Runs the same token contexts through SmolLM2-135M (30 layers) and captures one hook point, either
stopping the forward pass after that layer or running all layers, alternating the two so that load
from other processes affects both alike. Also times the whole ActivationSource pipeline (tokenising,
harvesting, shuffling) for the same hook point. The last line printed is one JSON object.

    python benchmarks/bench_harvest.py [--hook-point layers.8.resid_post] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from hfsae.activations import load_builtin_model
from hfsae.activations.hook_points import capture
from hfsae.activations.source import ActivationSource
from hfsae.activations.text import TextSource, token_contexts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hook-point", default="layers.8.resid_post")
    parser.add_argument("--context-size", type=int, default=64)
    parser.add_argument("--contexts-per-forward", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5, help="timed forward passes per setting")
    parser.add_argument("--source-tokens", type=int, default=32_768, help="rows for the pipeline timing")
    args = parser.parse_args()

    model, tokenizer = load_builtin_model()
    text = TextSource("builtin")
    contexts = []
    for _, ids in token_contexts(text, tokenizer, args.context_size):
        contexts.append(ids)
        if len(contexts) == args.contexts_per_forward:
            break
    input_ids = torch.tensor(contexts)
    tokens = input_ids.numel()

    seconds = {True: [], False: []}
    with torch.inference_mode():
        for stop_early in (True, False):  # warm-up
            capture(model, input_ids, [args.hook_point], stop_early=stop_early)
        for _ in range(args.repeats):
            for stop_early in (True, False):
                start = time.perf_counter()
                capture(model, input_ids, [args.hook_point], stop_early=stop_early)
                seconds[stop_early].append(time.perf_counter() - start)

    source = ActivationSource(
        model,
        tokenizer,
        [args.hook_point],
        text=text,
        context_size=args.context_size,
        contexts_per_forward=args.contexts_per_forward,
        n_tokens=args.source_tokens,
    )
    start = time.perf_counter()
    rows = sum(len(batch[args.hook_point]) for batch in source)
    source_seconds = time.perf_counter() - start

    # Medians: robust to a pass slowed by another process on this shared machine.
    early = tokens / sorted(seconds[True])[len(seconds[True]) // 2]
    full = tokens / sorted(seconds[False])[len(seconds[False]) // 2]
    result = {
        "model": model.name_or_path,
        "hook_point": args.hook_point,
        "layers": model.config.num_hidden_layers,
        "tokens_per_forward": tokens,
        "threads": torch.get_num_threads(),
        "early_stop_tokens_per_s": round(early, 1),
        "full_forward_tokens_per_s": round(full, 1),
        "speedup": round(early / full, 2),
        "source_rows_per_s": round(rows / source_seconds, 1),
        "source_rows": rows,
    }
    print(
        f"early stop {early:.0f} tok/s, full forward {full:.0f} tok/s: {early / full:.2f}×; "
        f"ActivationSource {rows / source_seconds:.0f} rows/s"
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
