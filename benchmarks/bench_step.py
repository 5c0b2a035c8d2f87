"""One TopK SAE training step on CPU against its floor (encoder matmul + topk), a naive dense step and the variants.

For each shape, in one run and interleaved (so machine noise hits all alike), times:
  (a) floor: the bare encoder matmul x @ W_encᵀ + b_enc and torch.topk(k);
  (b) naive: a dense TopK SAE step (dense [batch, n] code, dense decode, autograd) with AuxK;
  (c) hfsae: TopKSAE forward with AuxK firing (10% of latents marked dead), backward, decoder
      gradient projection, fused Adam, decoder renormalisation; the AuxK path is the one
      hfsae.ops.auxk measures and picks (during the warm-up);
  (d) rejected: the same step forced onto the AuxK path the chooser rejected;
  (e) no_dead: the same step without dead latents (AuxK off);
  (f) bf16: step (c) under CPU bf16 autocast (`--mixed-precision bf16`: the encoder matmul reads bf16,
      master weights, Adam and losses stay fp32), as a ratio to (c): what AMX-class CPUs gain;
  (g) batchtopk: step (c) of a BatchTopK SAE with the same weights (batch-level selection, threshold
      update), as a ratio to (c);
  (h) transcoder: step (c) of a transcoder with a skip connection (d_out = d_in, a random target),
      as a ratio to (c);
and, apart, Adam's step alone over the SAE's parameters: fused, foreach and one tensor at a time.
Ratios are of medians over `--repeats` interleaved rounds; `fastest` holds the same ratios from each
run's fastest round (steadier when other processes share the machine). Prints a table and, as its last
line, one JSON object: the CPU, torch's thread count and per shape the ratios.

    python benchmarks/bench_step.py [--repeats 5] [--shapes 576x16384 768x32768] [--threads N]
    python benchmarks/bench_step.py --threads 1 --clock cpu     # on a machine other processes keep busy
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from hfsae import TopKSAE, TopKSAEConfig, modeling
from hfsae.ops import autotune, cpu

BATCH, K, DEAD_FRACTION = 4096, 32, 0.1


def floor_step(x, W_enc, b_enc, k):
    pre = torch.addmm(b_enc, x, W_enc.T)
    return pre.topk(k, dim=1)


class NaiveDenseSAE(torch.nn.Module):
    """A TopK SAE written the obvious way: every intermediate is a dense [batch, n_latents] tensor."""

    def __init__(self, sae: TopKSAE):
        super().__init__()
        self.W_enc = torch.nn.Parameter(sae.W_enc.detach().clone())
        self.b_enc = torch.nn.Parameter(sae.b_enc.detach().clone())
        self.W_dec = torch.nn.Parameter(sae.W_dec.detach().clone())
        self.b_pre = torch.nn.Parameter(sae.b_pre.detach().clone())
        self.k, self.k_aux = sae.config.k, sae.config.k_aux_effective

    def loss(self, x, dead_mask):
        pre = (x - self.b_pre) @ self.W_enc.T + self.b_enc
        top = pre.topk(self.k, dim=1)
        z = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
        x_hat = z @ self.W_dec + self.b_pre
        variance = (x - x.mean(0)).pow(2).sum(-1).mean()
        fvu = (x - x_hat).pow(2).sum(-1).mean() / variance
        residual = (x - x_hat).detach()
        aux_top = pre.masked_fill(~dead_mask, float("-inf")).topk(min(self.k_aux, int(dead_mask.sum())), dim=1)
        z_aux = torch.zeros_like(pre).scatter(1, aux_top.indices, aux_top.values.relu())
        aux = (residual - z_aux @ self.W_dec).pow(2).sum(-1).mean() / (residual - residual.mean(0)).pow(2).sum(-1).mean()
        return fvu + aux / 32


def adam(params, implementation: str = "fused"):
    options = {"fused": dict(fused=True), "foreach": dict(foreach=True), "single": dict(foreach=False)}[implementation]
    return torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.999), eps=6.25e-10, **options)


def naive_step(model, optimizer, x, dead_mask):
    optimizer.zero_grad(set_to_none=True)
    model.loss(x, dead_mask).backward()
    optimizer.step()


def hfsae_step(sae, optimizer, x, dead_mask, target=None):
    optimizer.zero_grad(set_to_none=True)
    sae(x, target=target, dead_mask=dead_mask).loss.backward()
    sae.project_decoder_grad_()
    optimizer.step()
    sae.normalize_decoder_()


def cpu_name() -> str:
    """The processor's model name (Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as file:
            return next(line.split(":", 1)[1].strip() for line in file if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = CLOCKS["wall"]


def seconds(fn) -> float:
    start = clock()
    fn()
    return clock() - start


def first_auxk_path(step) -> str:
    """Run `step` once and return the AuxK path TopKSAE.forward took (measured there if not cached)."""
    chosen, choose = [], modeling.auxk_path
    modeling.auxk_path = lambda *args, **kwargs: chosen.append(choose(*args, **kwargs)) or chosen[-1]
    try:
        step()
    finally:
        modeling.auxk_path = choose
    return chosen[0]


def forced(path: str, fn):
    def run():
        autotune.set_path("auxk", path)
        try:
            fn()
        finally:
            autotune.set_path("auxk", None)

    return run


def autocast_bf16(fn):
    def run():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fn()

    return run


def adam_seconds(sae: TopKSAE, repeats: int) -> dict:
    """Median seconds of one Adam step alone per implementation, on the SAE's parameters with their gradients."""
    params = [p.detach().clone().requires_grad_() for p in sae.parameters()]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizers = {name: adam(params, name) for name in ("fused", "foreach", "single")}
    for optimizer in optimizers.values():
        optimizer.step()
    times = {name: [] for name in optimizers}
    for _ in range(repeats):
        for name, optimizer in optimizers.items():
            times[name].append(seconds(optimizer.step))
    return {name: statistics.median(values) for name, values in times.items()}


def variant_of(sae: TopKSAE, **options) -> TopKSAE:
    """A variant (TopKSAEConfig options) of `sae` holding the same weights (a W_skip of its own, zero)."""
    variant = TopKSAE(TopKSAEConfig(d_in=sae.config.d_in, n_latents=sae.config.n_latents, k=K, **options))
    variant.load_state_dict(sae.state_dict(), strict=False)
    return variant


def bench_shape(d_in: int, n_latents: int, repeats: int) -> dict:
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, n_latents=n_latents, k=K))
    batchtopk = variant_of(sae, architecture="batchtopk")
    transcoder = variant_of(sae, target_hook_point="target", skip_connection=True)
    target = torch.randn(BATCH, d_in)
    batchtopk_optimizer, transcoder_optimizer = adam(batchtopk.parameters()), adam(transcoder.parameters())
    x = torch.randn(BATCH, d_in)
    dead_mask = torch.rand(n_latents) < DEAD_FRACTION
    no_dead = torch.zeros(n_latents, dtype=torch.bool)
    naive = NaiveDenseSAE(sae)
    sae_optimizer, naive_optimizer = adam(sae.parameters()), adam(naive.parameters())
    W_enc, b_enc = sae.W_enc.detach(), sae.b_enc.detach()
    hfsae = lambda: hfsae_step(sae, sae_optimizer, x, dead_mask)  # noqa: E731
    path = first_auxk_path(hfsae)  # the AuxK path (and the encoder's block size) are measured here if not cached
    rejected = "sparse" if path == "dense" else "dense"
    runs = {
        "floor": lambda: floor_step(x, W_enc, b_enc, K),
        "naive": lambda: naive_step(naive, naive_optimizer, x, dead_mask),
        "hfsae": hfsae,
        "rejected": forced(rejected, hfsae),
        "no_dead": lambda: hfsae_step(sae, sae_optimizer, x, no_dead),
        "bf16": autocast_bf16(hfsae),
        "batchtopk": lambda: hfsae_step(batchtopk, batchtopk_optimizer, x, dead_mask),
        "transcoder": lambda: hfsae_step(transcoder, transcoder_optimizer, x, dead_mask, target),
    }
    for fn in runs.values():  # warm-up: allocator, optimizer state
        fn()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(seconds(fn))
    median = {name: statistics.median(values) for name, values in times.items()}
    fastest = {name: min(values) for name, values in times.items()}
    adam_s = adam_seconds(sae, repeats)
    floor = median["floor"]
    return {
        "shape": {"d_in": d_in, "n_latents": n_latents, "k": K, "batch": BATCH, "dead_fraction": DEAD_FRACTION},
        "auxk_path": path,
        "encoder_block_elements": cpu.tile_elements(x, sae.W_enc.detach(), K),
        "floor_s": round(floor, 4),
        "naive_s": round(median["naive"], 4),
        "hfsae_s": round(median["hfsae"], 4),
        "step_over_floor": round(median["hfsae"] / floor, 3),
        "rejected_over_floor": round(median["rejected"] / floor, 3),
        "no_dead_over_floor": round(median["no_dead"] / floor, 3),
        "dense_over_step": round(median["naive"] / median["hfsae"], 3),
        "bf16_autocast_over_step": round(median["bf16"] / median["hfsae"], 3),
        "batchtopk_over_step": round(median["batchtopk"] / median["hfsae"], 3),
        "transcoder_over_step": round(median["transcoder"] / median["hfsae"], 3),
        "adam_s": {name: round(value, 4) for name, value in adam_s.items()},
        "adam_fused_share_of_step": round(adam_s["fused"] / median["hfsae"], 3),
        # The same ratios from each run's fastest repeat: steadier than the medians on a busy machine.
        "fastest": {
            f"{name}_over_floor": round(fastest[name] / fastest["floor"], 3) for name in ("hfsae", "rejected", "no_dead")
        },
        "spread": {name: round((max(v) - min(v)) / median[name], 3) for name, v in times.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", nargs="+", default=["576x16384", "768x32768"], help="d_inxn_latents")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    parser.add_argument(
        "--clock", choices=sorted(CLOCKS), default="wall",
        help="wall: elapsed time; cpu: this thread's CPU time, which time spent waiting for a busy machine does "
        "not inflate (needs --threads 1: torch's worker threads are not counted)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.clock == "cpu" and args.threads != 1:
        parser.error("--clock cpu needs --threads 1 (only the calling thread's CPU time is counted)")
    global clock
    clock = CLOCKS[args.clock]
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"{cpu_name()}, {torch.get_num_threads()} torch threads, {args.clock} clock, torch {torch.__version__}")
    results = []
    print(f"{'d_in':>6} {'n_latents':>10} {'floor s':>8} {'hfsae s':>8} {'auxk path':>9} {'step/floor':>10} "
          f"{'rejected/floor':>14} {'no dead/floor':>13} {'naive/hfsae':>11} {'adam share':>10} {'bf16/fp32':>9} "
          f"{'batchtopk/topk':>14} {'transcoder/topk':>15}")
    for shape in args.shapes:
        d_in, n_latents = map(int, shape.split("x"))
        r = bench_shape(d_in, n_latents, args.repeats)
        results.append(r)
        print(f"{d_in:>6} {n_latents:>10} {r['floor_s']:>8} {r['hfsae_s']:>8} {r['auxk_path']:>9} {r['step_over_floor']:>10} "
              f"{r['rejected_over_floor']:>14} {r['no_dead_over_floor']:>13} {r['dense_over_step']:>11} "
              f"{r['adam_fused_share_of_step']:>10} {r['bf16_autocast_over_step']:>9} "
              f"{r['batchtopk_over_step']:>14} {r['transcoder_over_step']:>15}")
    print(json.dumps({"cpu": cpu_name(), "threads": torch.get_num_threads(), "clock": args.clock, "torch": torch.__version__, "results": results}))


if __name__ == "__main__":
    main()
