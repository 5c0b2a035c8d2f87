"""One TopK SAE training step on CPU against its floor (encoder matmul + topk) and a naive dense step.

For each shape, in one run and interleaved (so machine noise hits all three alike), times:
  (a) floor: the bare encoder matmul x @ W_encᵀ + b_enc and torch.topk(k);
  (b) naive: a dense TopK SAE step (dense [batch, n] code, dense decode, autograd) with AuxK;
  (c) hfsae: TopKSAE forward with AuxK firing (10% of latents marked dead), backward, decoder
      gradient projection, fused Adam, decoder renormalisation.
Prints a table and, as its last line, one JSON object with the ratios.

    python benchmarks/bench_step.py [--repeats 5] [--shapes 576x16384 768x32768]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from hfsae import TopKSAE, TopKSAEConfig

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


def adam(params):
    return torch.optim.Adam(params, lr=1e-4, betas=(0.9, 0.999), eps=6.25e-10, fused=True)


def naive_step(model, optimizer, x, dead_mask):
    optimizer.zero_grad(set_to_none=True)
    model.loss(x, dead_mask).backward()
    optimizer.step()


def hfsae_step(sae, optimizer, x, dead_mask):
    optimizer.zero_grad(set_to_none=True)
    sae(x, dead_mask=dead_mask).loss.backward()
    sae.project_decoder_grad_()
    optimizer.step()
    sae.normalize_decoder_()


def seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_shape(d_in: int, n_latents: int, repeats: int) -> dict:
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, n_latents=n_latents, k=K))
    x = torch.randn(BATCH, d_in)
    dead_mask = torch.rand(n_latents) < DEAD_FRACTION
    naive = NaiveDenseSAE(sae)
    sae_optimizer, naive_optimizer = adam(sae.parameters()), adam(naive.parameters())
    W_enc, b_enc = sae.W_enc.detach(), sae.b_enc.detach()
    runs = {
        "floor": lambda: floor_step(x, W_enc, b_enc, K),
        "naive": lambda: naive_step(naive, naive_optimizer, x, dead_mask),
        "hfsae": lambda: hfsae_step(sae, sae_optimizer, x, dead_mask),
    }
    for fn in runs.values():  # warm-up: allocator, optimizer state
        fn()
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(seconds(fn))
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "shape": {"d_in": d_in, "n_latents": n_latents, "k": K, "batch": BATCH, "dead_fraction": DEAD_FRACTION},
        "floor_s": round(median["floor"], 4),
        "naive_s": round(median["naive"], 4),
        "hfsae_s": round(median["hfsae"], 4),
        "step_over_floor": round(median["hfsae"] / median["floor"], 3),
        "dense_over_step": round(median["naive"] / median["hfsae"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--shapes", nargs="+", default=["576x16384", "768x32768"], help="d_inxn_latents")
    args = parser.parse_args()
    results = []
    print(f"{'d_in':>6} {'n_latents':>10} {'floor s':>8} {'naive s':>8} {'hfsae s':>8} {'hfsae/floor':>12} {'naive/hfsae':>12}")
    for shape in args.shapes:
        d_in, n_latents = map(int, shape.split("x"))
        r = bench_shape(d_in, n_latents, args.repeats)
        results.append(r)
        print(f"{d_in:>6} {n_latents:>10} {r['floor_s']:>8} {r['naive_s']:>8} {r['hfsae_s']:>8} "
              f"{r['step_over_floor']:>12} {r['dense_over_step']:>12}")
    print(json.dumps(results))


if __name__ == "__main__":
    main()
