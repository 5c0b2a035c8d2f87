"""Hub behaviour for the SAE model class, as huggingface_hub's ModelHubMixin gives it to any model.

`TopKSAE` inherits `HubMixin` before transformers' `PreTrainedModel`. This module imports nothing of
`hfsae.modeling`: the class is recorded (hub/model_class.py) when it subclasses the mixin, and the loaders
and converters build that class (`sae_class()`), so `modeling → hub` is the only direction of import.
"""

from __future__ import annotations

import os
from typing import Any

from .model_class import record_sae_class


class HubMixin:
    """from_pretrained for every format and layout, save_pretrained with our card, push_to_hub like transformers."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        record_sae_class(cls)  # the first class built on the mixin; what loaders and converters build

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
        `dtype=` and `token=` work as in transformers.
        """
        from .loading import load_sae

        return load_sae(
            cls, cls.from_pretrained_folder, pretrained_model_name_or_path, *args, hookpoint=hookpoint, subfolder=subfolder,
            revision=revision, **kwargs,
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
        from .push import PUSH_OPTIONS, push_saved_folder
        from .card import write_card
        from ..folder import CARD_FILE, check_finite

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
        from .push import push_to_hub

        return push_to_hub(self, repo_id, **options)
