"""`hfsae env`: the versions and platform to paste into a bug report (like `transformers env`)."""

from __future__ import annotations

import importlib.metadata
import platform
from dataclasses import dataclass

# Distributions whose versions change hfsae's behaviour; triton matters only where it is installed.
DISTRIBUTIONS = (
    "hfsae", "torch", "transformers", "huggingface_hub", "accelerate", "datasets", "safetensors", "gradio", "triton",
)  # fmt: skip


@dataclass
class EnvArgs:
    """`hfsae env` takes no options."""


def environment() -> dict[str, str]:
    """{what: version or state} for hfsae, Python, the libraries it runs on, the accelerator and the platform."""
    import torch

    info = {"Platform": platform.platform(), "Python": platform.python_version()}
    for name in DISTRIBUTIONS:
        try:
            info[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            if name != "triton":
                info[name] = "not installed"
    if torch.cuda.is_available():
        devices = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
        info["CUDA available"] = f"yes (CUDA {torch.version.cuda}; {devices})"
    else:
        info["CUDA available"] = "no"
    return info


def run_env(args: EnvArgs) -> dict[str, str]:
    """Print the environment as a Markdown list, ready to paste into an issue."""
    info = environment()
    print("Copy and paste the text below into your GitHub issue.\n")
    print("\n".join(f"- {name}: {value}" for name, value in info.items()))
    return info
