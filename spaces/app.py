"""Hugging Face Space entry point: the hfsae explorer for the SAE named by $HFSAE_SAE.

HFSAE_SAE        an SAE folder, Hub repo id or registry name (default: ./sae)
HFSAE_ANALYSIS   its analysis: a folder or Hub dataset repo (default: <SAE folder>/analysis)
"""

import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from hfsae.space import build_app

demo = build_app(os.environ.get("HFSAE_SAE", "sae"), os.environ.get("HFSAE_ANALYSIS") or None)

if __name__ == "__main__":
    demo.launch()
