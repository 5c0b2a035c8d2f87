"""The app of an exported explorer Space: `hfsae space --export` copies this file as the Space's app.py.

It reads what it serves from the JSON file of its own name beside it (app.json, written by the export:
{"sae", "analysis", "wheel", "vendor_dir"}), and the Space's variables override it:

    HFSAE_SAE        the SAE: a registry name or Hub repo id
    HFSAE_ANALYSIS   its analysis: a Hub dataset repo

hfsae is not on PyPI, and a Space installs requirements.txt before its other files are copied in, so
hfsae's wheel (beside this file) cannot be a requirement: this app unpacks it when it starts. Until
then only the standard library is imported here, and importing this module does nothing else.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path



def use_vendored_hfsae(wheel: Path, vendor_dir: str) -> Path:
    """Put hfsae from `wheel` first on sys.path; return where it was unpacked.

    pip unpacks it into vendor_dir beside the wheel (no index, no dependencies: requirements.txt
    installed those), once per wheel.
    """
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()[:16]
    try:
        target = wheel.parent / vendor_dir / digest
        target.parent.mkdir(exist_ok=True)
    except OSError:  # a read-only folder: a private temporary one, unpacked at every start
        target = Path(tempfile.mkdtemp(prefix="hfsae-")) / digest
    if not target.is_dir():
        staging = Path(tempfile.mkdtemp(prefix=f".{digest}-", dir=target.parent))
        pip = [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--target", str(staging)]
        subprocess.run([*pip, str(wheel)], check=True)
        try:
            staging.rename(target)
        except OSError:  # another process unpacked the same wheel first: use that one
            if not target.is_dir():
                raise
            shutil.rmtree(staging, ignore_errors=True)
    sys.path.insert(0, str(target))
    return target


def build_demo(app_file: Path):
    """The explorer of the SAE that app_file's settings (or the Space's variables) name, served by the Space's wheel."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    settings = json.loads(app_file.with_suffix(".json").read_text(encoding="utf-8"))
    use_vendored_hfsae(app_file.parent / settings["wheel"], settings["vendor_dir"])
    import hfsae
    from hfsae.space import build_app

    print(f"hfsae from {Path(hfsae.__file__).parent}", flush=True)
    analysis = os.environ.get("HFSAE_ANALYSIS", settings["analysis"]) or None
    return build_app(os.environ.get("HFSAE_SAE", settings["sae"]), analysis)


if __name__ == "__main__":
    build_demo(Path(__file__).resolve()).launch()
