"""Step time and peak extra memory against n_latents, for hfsae and two dense-encoder designs (CPU, fp32).

For each n_latents (d_in 768, k 32, batch 4096 by default) and each implementation, a fresh subprocess
times a training step against the bare encoder matmul in the same process (medians of 3, interleaved),
and records the step's peak resident memory beyond the weights, the Adam state and one gradient per
parameter; buffers a design keeps from step to step (hfsae's pre-activation block) count as extra:
  hfsae    TopKSAE: blocked encoder + grouped top-k, sparse backward (never a [batch, n] tensor whole);
  library  the design of existing libraries: dense [batch, n] pre-activations + torch.topk + sparse decode;
  naive    everything dense: [batch, n] pre-activations, code and gradients.
Peak memory is the kernel's VmHWM, reset before the measured step (/proc/self/clear_refs), so it counts
what the step really touched; the baseline is the resident size before the first step. Prints a table;
the last line is one JSON object.

    python benchmarks/bench_memory.py [--n-latents 16384 32768 65536 131072 262144] [--naive-max 65536]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

D_IN, K, BATCH = 768, 32, 4096


def _rss_bytes(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def measure(implementation: str, n_latents: int, dead_fraction: float) -> dict:
    """Runs inside the subprocess: one warm-up step, then the measured step and the bare matmul."""
    import torch

    sys.path.insert(0, os.path.dirname(__file__))
    from bench_step import NaiveDenseSAE, adam, hfsae_step, naive_step

    from hfsae import TopKSAE, TopKSAEConfig
    from hfsae.ops import selected_preactivations, sparse_decode

    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=D_IN, n_latents=n_latents, k=K))
    x = torch.randn(BATCH, D_IN)
    dead_mask = (torch.rand(n_latents) < dead_fraction) if dead_fraction > 0 else None

    if implementation == "hfsae":
        model, optimizer = sae, adam(sae.parameters())

        def step():
            hfsae_step(sae, optimizer, x, dead_mask)

    elif implementation == "naive":
        model = NaiveDenseSAE(sae)
        optimizer = adam(model.parameters())
        mask = dead_mask if dead_mask is not None else torch.zeros(n_latents, dtype=torch.bool)

        def step():
            naive_step(model, optimizer, x, mask)

    else:  # library: dense pre-activations and torch.topk, then the same sparse decoder as hfsae
        model, optimizer = sae, adam(sae.parameters())
        ops = sae.ops

        def step():
            optimizer.zero_grad(set_to_none=True)
            centred = x - sae.b_pre
            pre = torch.addmm(sae.b_enc, centred.detach(), sae.W_enc.detach().T)
            top = pre.topk(K, dim=1)
            values = selected_preactivations(x, sae.W_enc, sae.b_enc, top.indices, top.values, ops, b_pre=sae.b_pre)
            x_hat = sparse_decode(top.indices, values.relu(), sae.W_dec, ops) + sae.b_pre
            ((x - x_hat).pow(2).sum(-1).mean() / (x - x.mean(0)).pow(2).sum(-1).mean()).backward()
            sae.project_decoder_grad_()
            optimizer.step()
            sae.normalize_decoder_()

    resident = _rss_bytes("VmRSS")  # weights, input and runtime, before any step
    step()  # warm-up: Adam state, and whatever a design keeps between steps (counted below)
    optimizer.zero_grad(set_to_none=True)
    grad_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
    state_bytes = sum(
        t.numel() * t.element_size() for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)
    )
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # reset the peak (VmHWM) to the current resident size
    step()
    peak = _rss_bytes("VmHWM")

    W_enc, b_enc = sae.W_enc.detach(), sae.b_enc.detach()
    step_times, matmul_times = [], []
    for _ in range(3):  # interleaved, so machine noise hits both alike
        start = time.perf_counter()
        step()
        step_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        torch.addmm(b_enc, x, W_enc.T)
        matmul_times.append(time.perf_counter() - start)
    step_s, matmul_s = statistics.median(step_times), statistics.median(matmul_times)
    return {
        "implementation": implementation,
        "n_latents": n_latents,
        "step_s": round(step_s, 3),
        "matmul_s": round(matmul_s, 3),
        "step_over_matmul": round(step_s / matmul_s, 3),
        "peak_extra_mib": round(max(0, peak - resident - state_bytes - grad_bytes) / 2**20, 1),
    }


def run_in_subprocess(implementation: str, n_latents: int, dead_fraction: float) -> dict:
    # Fixed mmap threshold: every large tensor is its own mapping, returned to the system when freed,
    # so the resident size before the step holds no freed-but-cached memory.
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "131072"}
    command = [sys.executable, __file__, "--child", implementation, str(n_latents), str(dead_fraction)]
    output = subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-latents", type=int, nargs="+", default=[16384, 32768, 65536, 131072, 262144])
    parser.add_argument("--naive-max", type=int, default=65536, help="largest n for the all-dense step (memory)")
    parser.add_argument("--dead-fraction", type=float, default=0.0, help="latents marked dead (AuxK firing)")
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        implementation, n_latents, dead_fraction = args.child
        print(json.dumps(measure(implementation, int(n_latents), float(dead_fraction))))
        return

    rows = []
    print(f"{'implementation':>14} {'n_latents':>10} {'step s':>8} {'matmul s':>9} {'step/matmul':>12} {'peak extra MiB':>15}")
    for n_latents in args.n_latents:
        for implementation in ("hfsae", "library", "naive"):
            if implementation == "naive" and n_latents > args.naive_max:
                continue
            row = run_in_subprocess(implementation, n_latents, args.dead_fraction)
            rows.append(row)
            print(f"{implementation:>14} {n_latents:>10} {row['step_s']:>8} {row['matmul_s']:>9} "
                  f"{row['step_over_matmul']:>12} {row['peak_extra_mib']:>15}")

    def extra(implementation, n):
        return next((r["peak_extra_mib"] for r in rows if r["implementation"] == implementation and r["n_latents"] == n), None)

    summary = {"rows": rows, "dead_fraction": args.dead_fraction}
    if 32768 in args.n_latents and 131072 in args.n_latents:
        for implementation in ("hfsae", "library"):
            summary[f"{implementation}_mem_growth_32k_to_131k"] = round(extra(implementation, 131072) / extra(implementation, 32768), 3)
        summary["hfsae_step_over_matmul_131k"] = next(
            r["step_over_matmul"] for r in rows if r["implementation"] == "hfsae" and r["n_latents"] == 131072
        )
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
