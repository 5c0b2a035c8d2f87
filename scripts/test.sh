#!/usr/bin/env bash
# Install, then run the whole test suite (slow and browser tests included). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh --browser
export GRADIO_ANALYTICS_ENABLED=False HF_HUB_DISABLE_TELEMETRY=1
exec python3 -m pytest -ra "$@"
