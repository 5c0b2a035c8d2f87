#!/usr/bin/env bash
# The main job on the built-in default: install, train an SAE on SmolLM2-135M over text shipped with
# Python, evaluate it with the paper's metrics, and write it with its model card to outputs/default.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
out="${1:-outputs/default}"
hfsae train --output-dir "$out"
hfsae eval "$out"
echo "The SAE, its metrics and its model card are in $out (README.md is the card)."
