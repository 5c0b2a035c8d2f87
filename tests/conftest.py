"""Session-wide test settings: offline Hub, a private HF_HOME, deterministic CPU threads."""

import os
import tempfile

# huggingface_hub reads these on import: set them before anything imports it. Offline mode turns a
# stray remote call into an immediate error instead of a ~20 s retry loop (HUB_TESTING.md).
_HF_HOME = tempfile.mkdtemp(prefix="hfsae-tests-hf-home-")
os.environ.setdefault("HF_HOME", _HF_HOME)
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"
os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
