"""Streaming training: memory against the token budget, pipeline overhead, forward speed per dtype.

Three measurements, side by side in one run (the last line printed is one JSON object):

- rss_growth_1m_to_8m: peak RSS of a `--streaming` training run (`hfsae.training.train`, its own
  process) over --large-tokens against one over --small-tokens, same buffer, minus 1, on a tiny
  random Llama (d 64) and byte-level text, so that the run is quick and the SAE and buffer are what
  could grow. Goal < 0.10 (memory O(buffer + model), not O(tokens)).
- pipeline_overhead: on the built-in model (its default dtype), seconds of a streaming `Trainer.fit`
  over --pipeline-tokens, divided by (forward-only seconds + SAE-steps-only seconds) on the same
  tokens: forward-only runs the model over the same contexts with nothing else; SAE-steps-only
  trains on those rows held in memory. Goal ≤ 1.10.
- forward_tokens_per_s of the built-in model to layer 10 in float32 and bfloat16 (alternating),
  which dtype the default uses on this machine, and how far bf16 activations are from fp32 ones.

    python benchmarks/bench_train.py                                   # 1M vs 8M tokens (long on 2 cores)
    python benchmarks/bench_train.py --small-tokens 250000 --large-tokens 2000000 --pipeline-tokens 32768
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

HOOK_POINT = "layers.10.resid_post"  # the default run's hook point
TINY_HOOK_POINT = "layers.1.resid_post"


# ---- peak RSS of a streaming run (one process per token budget) ------------------------------------


def make_tiny_inputs(folder: Path, tokens: int) -> tuple[Path, Path]:
    """A random 2-layer Llama (d 64) with a byte tokenizer, and ~tokens bytes of word text (jsonl)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

    model_dir = folder / "tiny-llama"
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {symbol: i for i, symbol in enumerate(alphabet)} | {"<|endoftext|>": len(alphabet)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<|endoftext|>", bos_token="<|endoftext|>")
    config = AutoConfig.for_model("llama", vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                  num_key_value_heads=2, intermediate_size=128)  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)

    rng = random.Random(0)
    words = "sparse autoencoders learn latents from the activations of language models at one hook point".split()
    text_file = folder / "text.jsonl"
    written = 0
    with open(text_file, "w") as handle:
        while written < tokens * 1.12:  # 5% goes to the held-out split; 1/64 of positions is left out
            document = " ".join(rng.choice(words) for _ in range(rng.randint(20, 120)))
            handle.write(json.dumps({"text": document}) + "\n")
            written += len(document) + 1
    return model_dir, text_file


def streaming_child(model_dir: str, text_file: str, tokens: int, buffer_tokens: int, output_dir: str) -> dict:
    """One streaming training run over `tokens` tokens (in this process); its peak RSS."""
    from hfsae.training import TrainConfig, train
    from hfsae.training.trainer import peak_memory

    config = TrainConfig(
        model=model_dir, dataset=text_file, hook_points=[TINY_HOOK_POINT], n_latents=[512], k=[16], streaming=True,
        buffer_tokens=buffer_tokens, batch_size=4096, train_tokens=tokens, eval_tokens=4096, dead_tokens=100_000,
        device_batch_tokens=8192, output_dir=output_dir, quiet=True, model_dtype="float32", logging_steps=200,
    )  # fmt: skip
    started = time.perf_counter()
    (result,) = train(config)
    return {
        "tokens": result.metrics["tokens"],
        "seconds": round(time.perf_counter() - started, 1),
        "peak_rss_bytes": peak_memory()["peak_rss_bytes"],
        "fvu": round(result.metrics["fvu"], 4),
        "forward_tokens_per_s": result.metrics.get("forward_tokens_per_s"),
        "sae_tokens_per_s": result.metrics["sae_tokens_per_s"],
    }


def rss_growth(small: int, large: int, buffer_tokens: int) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench-train-") as tmp:
        folder = Path(tmp)
        model_dir, text_file = make_tiny_inputs(folder, large)
        runs = {}
        for name, tokens in (("small", small), ("large", large)):
            command = [sys.executable, __file__, "--child", str(model_dir), str(text_file), str(tokens),
                       str(buffer_tokens), str(folder / f"out-{name}")]  # fmt: skip
            # One thread: tiny tensors, and a second OpenMP thread only spins on a shared machine.
            env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
            finished = subprocess.run(command, capture_output=True, text=True, check=False, env=env)
            if finished.returncode:
                raise RuntimeError(f"the {name} streaming run failed:\n{finished.stderr[-3000:]}")
            runs[name] = json.loads(finished.stdout.strip().splitlines()[-1])
    return {
        "rss_growth": round(runs["large"]["peak_rss_bytes"] / runs["small"]["peak_rss_bytes"] - 1, 4),
        "runs": runs,
    }


# ---- the built-in model: forward speed per dtype, pipeline overhead ---------------------------------


def first_contexts(tokenizer, n_tokens: int, context_size: int = 64) -> torch.Tensor:
    from hfsae.activations.text import TextSource, token_contexts

    wanted = -(-n_tokens // (context_size - 1))
    contexts = [ids for _, (_, ids) in zip(range(wanted), token_contexts(TextSource("builtin"), tokenizer, context_size))]
    return torch.tensor(contexts)


def forward_speeds(repeats: int) -> dict:
    from hfsae.activations import load_language_model
    from hfsae.activations.hook_points import capture
    from hfsae.activations.models import resolve_dtype
    from hfsae.activations.positions import positions_used

    models = {name: load_language_model("builtin", dtype=name, quiet=True)[0] for name in ("float32", "bfloat16")}
    _, tokenizer = load_language_model("builtin", quiet=True)
    input_ids = first_contexts(tokenizer, 128 * 63)  # the default run's forward pass: 128 contexts of 64
    seconds = {name: [] for name in models}
    rows = {}
    with torch.inference_mode():
        for name, model in models.items():  # warm-up, and the activations to compare
            rows[name] = positions_used(capture(model, input_ids, [HOOK_POINT])[HOOK_POINT]).float()
        for _ in range(repeats):
            for name, model in models.items():
                started = time.perf_counter()
                capture(model, input_ids, [HOOK_POINT])
                seconds[name].append(time.perf_counter() - started)
    relative = ((rows["bfloat16"] - rows["float32"]).norm() / rows["float32"].norm()).item()
    default = str(resolve_dtype(None, "cpu")).removeprefix("torch.")
    return {
        "forward_tokens_per_s": {name: round(input_ids.numel() / statistics.median(s)) for name, s in seconds.items()},
        "default_dtype": default,
        "bf16_relative_error": round(relative, 4),
        "forward_tokens": input_ids.numel(),
    }


def pipeline_overhead(n_tokens: int, buffer_tokens: int, repeats: int) -> dict:
    from hfsae.activations import ActivationSource, TextSource, load_language_model
    from hfsae.activations.hook_points import capture
    from hfsae.activations.positions import positions_used
    from hfsae.training import TrainConfig
    from hfsae.training.data import EpochBatches, StreamBatches
    from hfsae.training.trainer import Trainer

    model, tokenizer = load_language_model("builtin", quiet=True)  # the default dtype
    batch_size, context_size, per_forward = 2048, 64, 128
    config = TrainConfig(streaming=True, train_tokens=n_tokens, batch_size=batch_size, buffer_tokens=buffer_tokens,
                         quiet=True, logging_steps=10**6, output_dir=tempfile.mkdtemp(prefix="bench-train-"))  # fmt: skip
    n_contexts = -(-n_tokens // (context_size - 1))
    input_ids = first_contexts(tokenizer, (n_contexts + 32) * (context_size - 1), context_size)
    input_ids, heldout_ids = input_ids[:n_contexts], input_ids[n_contexts:]  # the stream's contexts, and 32 more

    def forward_only():  # the model over the contexts, nothing else
        with torch.inference_mode():
            return [positions_used(capture(model, ids, [HOOK_POINT])[HOOK_POINT]).float() for ids in input_ids.split(per_forward)]

    def sae_steps_only(table):  # the same number of rows, already in memory
        Trainer(config).fit(EpochBatches({HOOK_POINT: table}, batch_size=batch_size, seed=0), heldout)

    def end_to_end():  # text → model → shuffle buffer → SAE steps, in one loop
        source = ActivationSource(model, tokenizer, [HOOK_POINT], text=TextSource("builtin"), context_size=context_size,
                                  contexts_per_forward=per_forward, batch_tokens=batch_size, buffer_tokens=buffer_tokens,
                                  n_tokens=n_tokens, seed=0)  # fmt: skip
        Trainer(config).fit(StreamBatches(source), heldout)
        inside.append(round(source.forward_seconds, 1))

    with torch.inference_mode():
        heldout = {HOOK_POINT: positions_used(capture(model, heldout_ids, [HOOK_POINT])[HOOK_POINT]).float()}
    table = torch.cat(forward_only())[:n_tokens].clone()
    seconds = {"forward_only": [], "sae_steps_only": [], "end_to_end": []}
    inside = []  # seconds of the forward passes within each end-to-end run
    cpu_seconds = {name: [] for name in seconds}
    # Interleaved, so that load from other processes on a shared machine falls on every part alike;
    # CPU seconds of this process too, which move less with that load than wall-clock seconds.
    for _ in range(repeats):
        for name, run in (("forward_only", forward_only), ("sae_steps_only", lambda: sae_steps_only(table)),
                          ("end_to_end", end_to_end)):  # fmt: skip
            started, cpu_started = time.perf_counter(), time.process_time()
            run()
            seconds[name].append(round(time.perf_counter() - started, 1))
            cpu_seconds[name].append(round(time.process_time() - cpu_started, 1))

    def ratio(measured):  # each repeat's parts ran back to back: the median of the repeats' ratios
        parts = zip(measured["end_to_end"], measured["forward_only"], measured["sae_steps_only"])
        return round(statistics.median(end / (forward + sae) for end, forward, sae in parts), 3)
    return {
        "pipeline_overhead": ratio(seconds),
        "pipeline_overhead_cpu_time": ratio(cpu_seconds),
        # The forward passes timed inside the end-to-end run itself, so under the same load as it.
        "pipeline_overhead_forward_timed_inside": ratio({**seconds, "forward_only": inside}),
        "forward_seconds_inside_end_to_end": inside,
        "pipeline_seconds": seconds,
        "pipeline_cpu_seconds": cpu_seconds,
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        model_dir, text_file, tokens, buffer_tokens, output_dir = sys.argv[2:]
        print(json.dumps(streaming_child(model_dir, text_file, int(tokens), int(buffer_tokens), output_dir)))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small-tokens", type=int, default=1_000_000)
    parser.add_argument("--large-tokens", type=int, default=8_000_000)
    parser.add_argument("--buffer-tokens", type=int, default=65_536, help="shuffle buffer of every streaming run")
    # 63 · 2048: whole batches of 2048 and whole forward passes of 128 contexts (63 positions each).
    parser.add_argument("--pipeline-tokens", type=int, default=129_024, help="tokens of the built-in model's pipeline runs")
    parser.add_argument("--repeats", type=int, default=3, help="timed forward passes per dtype")
    parser.add_argument("--pipeline-repeats", type=int, default=3, help="interleaved runs of each pipeline part")
    parser.add_argument("--skip", nargs="*", default=[], choices=["rss", "pipeline", "forward"])
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

    report: dict = {"threads": torch.get_num_threads()}
    if "forward" not in args.skip:
        report.update(forward_speeds(args.repeats))
        print(json.dumps(report), flush=True)
    if "pipeline" not in args.skip:
        report.update(pipeline_overhead(args.pipeline_tokens, args.buffer_tokens, args.pipeline_repeats),
                      pipeline_tokens=args.pipeline_tokens)
        print(json.dumps(report), flush=True)
    if "rss" not in args.skip:
        growth = rss_growth(args.small_tokens, args.large_tokens, args.buffer_tokens)
        report.update(
            rss_growth_1m_to_8m=growth["rss_growth"],
            rss_sizes={"small_tokens": args.small_tokens, "large_tokens": args.large_tokens,
                       "buffer_tokens": args.buffer_tokens},  # fmt: skip
            rss_runs=growth["runs"],
        )
    goals = {"rss_growth_below_0.10": ("rss_growth_1m_to_8m", lambda value: value < 0.10),
             "pipeline_overhead_at_most_1.10": ("pipeline_overhead", lambda value: value <= 1.10)}  # fmt: skip
    report["goals_met"] = {goal: met(report[key]) for goal, (key, met) in goals.items() if key in report}  # skipped: absent
    print(json.dumps(report))


if __name__ == "__main__":
    main()
