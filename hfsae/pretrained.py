"""Hub behaviour for the SAE model class, as huggingface_hub's ModelHubMixin gives it to any model.

`TopKSAE` inherits `HubMixin` before transformers' `PreTrainedModel`. The Hub package is imported only
inside the methods, when they run, so `import hfsae.modeling` does not load it; and the loaders build
the class they are called on (`cls`), so a subclass's from_pretrained returns the subclass, whatever
the format of the files.
"""

from __future__ import annotations

import os
from typing import Any


class HubMixin:
    """from_pretrained for every format and layout, save_pretrained with our card, push_to_hub like transformers."""

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *args: Any,
        hookpoint: str | None = None,
        subfolder: str = "",
        revision: str | None = None,
        **kwargs: Any,
    ):
        """Load an SAE by registry name, Hub repo id or local path; every supported format is converted.

        `hookpoint=` picks one SAE of a repo or folder holding several, by folder name or hook point
        ('layers.3', 'layers.3.resid_post', 'blocks.3.hook_resid_post'); `subfolder=`, `revision=`,
        `dtype=`, `token=`, `cache_dir=`, `force_download=`, `local_files_only=` and `proxies=` work as
        in transformers; `k=` gives the k of formats that do not store it (Qwen-Scope).
        """
        from .hub.source import load_sae

        return load_sae(
            cls, pretrained_model_name_or_path, *args, hookpoint=hookpoint, subfolder=subfolder, revision=revision,
            **kwargs,
        )

    @classmethod
    def from_pretrained_folder(cls, folder: str, *args: Any, **kwargs: Any):
        """Load an hfsae folder already on disk (config.json + model.safetensors): transformers' loader.

        `from_pretrained` calls it once it has found and downloaded the folder; a model class may make it stricter.
        """
        return super().from_pretrained(folder, *args, **kwargs)

    def save_pretrained(self, save_directory, *args: Any, push_to_hub: bool = False, **kwargs: Any):
        """Save config.json and model.safetensors as transformers does; write our card when there is none.

        With `push_to_hub=True` the folder is then pushed (see `push_to_hub`; `repo_id` defaults to the
        folder's name), with our card rather than transformers' generic one.
        """
        from .folder import CARD_FILE, check_finite
        from .hub.card import write_card
        from .hub.push import PUSH_OPTIONS, push_saved_folder

        push_options = {name: kwargs.pop(name) for name in PUSH_OPTIONS if name in kwargs}
        check_finite(dict(self.state_dict()), what="The SAE to save")  # a NaN file breaks every later command
        super().save_pretrained(save_directory, *args, **kwargs)
        if not kwargs.get("is_main_process", True):
            return None
        if push_to_hub:  # push_folder renders the card, once, with the repo id
            return push_saved_folder(save_directory, **push_options)
        if not os.path.exists(os.path.join(save_directory, CARD_FILE)):
            write_card(save_directory)
        return None

    def push_to_hub(self, repo_id: str, **options: Any):
        """Upload config, weights and our card to `repo_id`, as transformers' push_to_hub does.

        Options: revision (a branch, created when missing), create_pr, commit_message,
        commit_description, private, token, tags, folder (subfolder: one folder of a multi-SAE repo).
        Returns the huggingface_hub CommitInfo (its `.commit_url`, `.pr_url`, and `.repo_id`).
        """
        from .hub.push import push_to_hub

        return push_to_hub(self, repo_id, **options)
