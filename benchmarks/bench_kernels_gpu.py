"""GPU benchmark of the Triton backend: fused encoder + TopK and a training-like step against bare matmul.

For each shape and dtype, measured in one run (medians of CUDA-event timings, triton.testing.do_bench):
  matmul        bare torch.matmul(x, W_enc.T): the floor every TopK SAE pays
  dense_topk    torch.matmul + b_enc + torch.topk: what existing libraries do, with its [batch, n] matrix
  fused         hfsae.ops.triton_kernels.fused_encode_topk (no [batch, n] matrix)
  step          encode+TopK on the path `encoder_path` picks (measured: fused or dense_topk), sparse
                decode, backward through sparse_decode / selected_preactivations, fused Adam over
                W_enc, b_enc, W_dec, b_pre; its peak extra memory too
Throughput is the encoder's 2·batch·n·d FLOPs over each time; `*_over_matmul` are matmul time / time,
so 1.0 means as fast as the bare matmul. fp32 runs the fused kernel with tf32x3 (three TF32 products,
~fp32 error) unless --allow-tf32, which lets both sides use TF32. The last line is one JSON object.

    python benchmarks/bench_kernels_gpu.py                      # both shapes, bf16 and fp32
    python benchmarks/bench_kernels_gpu.py --shapes small --sweep
"""

from __future__ import annotations

import argparse
import dataclasses
import json

import torch
from triton.testing import do_bench

from hfsae.ops import backend_for, selected_preactivations, sparse_decode

SHAPES = {
    "small": dict(d_in=768, n_latents=32768, k=32, batch=4096),
    "large": dict(d_in=4096, n_latents=262144, k=64, batch=4096),
}
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
SWEEP = [  # (block_m, block_n, block_k, num_warps, num_stages)
    (128, 128, 64, 8, 3),
    (128, 128, 64, 8, 4),
    (128, 256, 64, 8, 3),
    (64, 128, 64, 4, 4),
    (128, 64, 64, 4, 4),
    (256, 128, 64, 8, 3),
]


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def make_sae(shape: dict, dtype: torch.dtype, seed: int = 0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    d, n, batch = shape["d_in"], shape["n_latents"], shape["batch"]
    W_dec = torch.randn(n, d, device="cuda", generator=g, dtype=dtype)
    W_dec /= W_dec.norm(dim=1, keepdim=True)
    params = dict(
        W_enc=W_dec.clone().requires_grad_(),
        b_enc=torch.zeros(n, device="cuda", dtype=dtype).requires_grad_(),
        W_dec=W_dec.requires_grad_(),
        b_pre=torch.zeros(d, device="cuda", dtype=dtype).requires_grad_(),
    )
    x = torch.randn(batch, d, device="cuda", generator=g, dtype=dtype)
    return params, x


def training_step(ops, params: dict, x: torch.Tensor, k: int, optimizer: torch.optim.Optimizer) -> None:
    W_enc, b_enc, W_dec, b_pre = params["W_enc"], params["b_enc"], params["W_dec"], params["b_pre"]
    x_centred = x - b_pre
    selection = ops.encode_topk(x_centred.detach(), W_enc.detach(), b_enc.detach(), k)
    values = selected_preactivations(x_centred, W_enc, b_enc, selection.indices, selection.values, ops).relu()
    x_hat = sparse_decode(selection.indices, values, W_dec, ops) + b_pre
    loss = (x_hat.float() - x.float()).pow(2).sum() / x.float().pow(2).sum()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def peak_extra_bytes(fn) -> int:
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - base


def bench_shape(name: str, shape: dict, dtype_name: str, ops, sweep: bool, rep_ms: int) -> dict:
    dtype = DTYPES[dtype_name]
    d, n, k, batch = shape["d_in"], shape["n_latents"], shape["k"], shape["batch"]
    flops = 2 * batch * n * d
    params, x = make_sae(shape, dtype)
    W_enc, b_enc = params["W_enc"].detach(), params["b_enc"].detach()
    row = dict(shape=name, dtype=dtype_name, **shape)

    matmul_ms = do_bench(lambda: torch.matmul(x, W_enc.T), rep=rep_ms, return_mode="median")
    dense_ms = do_bench(lambda: torch.topk(torch.addmm(b_enc, x, W_enc.T), k, dim=1), rep=rep_ms, return_mode="median")

    default_tiles = ops.CUDA_ENCODE_TILES
    candidates = [default_tiles]
    if sweep:
        candidates += [
            dataclasses.replace(default_tiles, block_m=m, block_n=bn, block_k=bk, num_warps=w, num_stages=s)
            for m, bn, bk, w, s in SWEEP
        ]
    timings, tiles_by_key = {}, {}
    for tiles in candidates:
        ops.CUDA_ENCODE_TILES = tiles
        key = f"{tiles.block_m}x{tiles.block_n}x{tiles.block_k}/w{tiles.num_warps}/s{tiles.num_stages}"
        try:
            timings[key] = do_bench(lambda: ops.fused_encode_topk(x, W_enc, b_enc, k), rep=rep_ms, return_mode="median")
        except Exception as err:  # a tile shape may not fit in shared memory on this card
            print(f"  {name} {dtype_name} tiles {key}: failed ({type(err).__name__}: {str(err)[:120]})")
            continue
        tiles_by_key[key] = tiles
        print(f"  {name} {dtype_name} tiles {key}: {timings[key]:.3f} ms, {tflops(flops, timings[key]):.1f} TFLOP/s")
    best_key = min(timings, key=timings.get)
    ops.CUDA_ENCODE_TILES = tiles_by_key[best_key]
    fused_ms = timings[best_key]

    # Correctness at full size: same values as the dense top-k (sets up to near-ties).
    selection = ops.fused_encode_topk(x, W_enc, b_enc, k)
    dense_values = torch.topk(torch.addmm(b_enc, x, W_enc.T).float(), k, dim=1).values
    value_error = (selection.values.float() - dense_values).abs().max().item()

    fused_bytes = peak_extra_bytes(lambda: ops.fused_encode_topk(x, W_enc, b_enc, k))
    dense_bytes = peak_extra_bytes(lambda: torch.topk(torch.addmm(b_enc, x, W_enc.T), k, dim=1))

    optimizer = torch.optim.Adam(params.values(), lr=1e-4, fused=True)
    training_step(ops, params, x, k, optimizer)  # allocates the optimizer state before timing
    encoder_path = ops.encoder_path(x, W_enc, b_enc, k)  # measured here (cached), before the timed steps
    step_ms = do_bench(lambda: training_step(ops, params, x, k, optimizer), rep=rep_ms, return_mode="median")
    step_bytes = peak_extra_bytes(lambda: training_step(ops, params, x, k, optimizer))
    ops.CUDA_ENCODE_TILES = default_tiles

    row.update(
        tiles=best_key,
        encoder_path=encoder_path,
        matmul_ms=round(matmul_ms, 3),
        dense_topk_ms=round(dense_ms, 3),
        fused_ms=round(fused_ms, 3),
        step_ms=round(step_ms, 3),
        matmul_tflops=round(tflops(flops, matmul_ms), 1),
        fused_tflops=round(tflops(flops, fused_ms), 1),
        step_tflops=round(tflops(flops, step_ms), 1),
        fused_over_matmul=round(matmul_ms / fused_ms, 3),
        step_over_matmul=round(matmul_ms / step_ms, 3),
        dense_topk_over_matmul=round(matmul_ms / dense_ms, 3),
        fused_peak_extra_mib=round(fused_bytes / 2**20, 1),
        dense_topk_peak_extra_mib=round(dense_bytes / 2**20, 1),
        step_peak_extra_mib=round(step_bytes / 2**20, 1),
        max_value_error_vs_dense=value_error,
    )
    del params, x, optimizer
    torch.cuda.empty_cache()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shapes", nargs="+", default=["small", "large"], choices=sorted(SHAPES))
    parser.add_argument("--dtypes", nargs="+", default=["bf16", "fp32"], choices=sorted(DTYPES))
    parser.add_argument("--sweep", action="store_true", help="also time the tile shapes in SWEEP; keep the best")
    parser.add_argument("--allow-tf32", action="store_true", help="let fp32 matmuls (torch and Triton) use TF32")
    parser.add_argument("--rep-ms", type=int, default=200, help="milliseconds of repetitions per timing")
    args = parser.parse_args()

    torch.backends.cuda.matmul.allow_tf32 = args.allow_tf32
    ops = backend_for("cuda", "triton")

    device = torch.cuda.get_device_name()
    print(f"device: {device}, torch {torch.__version__}, triton {__import__('triton').__version__}")
    rows = []
    for name in args.shapes:
        for dtype_name in args.dtypes:
            row = bench_shape(name, SHAPES[name], dtype_name, ops, args.sweep, args.rep_ms)
            rows.append(row)
            print(
                f"{name:5} {dtype_name}: matmul {row['matmul_ms']:8.3f} ms ({row['matmul_tflops']:6.1f} TFLOP/s) | "
                f"fused {row['fused_ms']:8.3f} ms ({row['fused_tflops']:6.1f}, {row['fused_over_matmul']:.2f}×) | "
                f"step {row['step_ms']:8.3f} ms ({row['step_over_matmul']:.2f}×) | "
                f"dense+topk {row['dense_topk_ms']:8.3f} ms | peak extra {row['fused_peak_extra_mib']} MiB "
                f"vs {row['dense_topk_peak_extra_mib']} MiB"
            )
    print(json.dumps(dict(device=device, allow_tf32=args.allow_tf32, results=rows)))


if __name__ == "__main__":
    main()
