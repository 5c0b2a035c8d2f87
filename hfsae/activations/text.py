"""Text in, token contexts out: documents from `datasets` or the built-in corpus, packed into
fixed-length contexts.

    text = TextSource("builtin", split="train")                 # or "user/dataset", "docs/*.jsonl"
    for position, ids in token_contexts(text, tokenizer, context_size=64):
        ...                                                      # ids: list of 64 token ids

Documents go to the "train" or "test" split by a hash of their text, so the split does not depend
on order, shuffling or streaming, and the same document never lands in both.
"""

from __future__ import annotations

import glob
import hashlib
import os
import sys
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from hfsae.activations.builtin import builtin_texts, is_builtin

from ..errors import HfsaeError

__all__ = [
    "DatasetUnavailableError",
    "TextColumnError",
    "TextPosition",
    "TextSource",
    "TextValueError",
    "token_contexts",
]

# Local file types and the `datasets` builder that reads each.
FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".txt": "text", ".csv": "csv"}
# Documents are read from `datasets` and tokenised this many at a time.
DOCUMENT_BATCH = 64


class DatasetUnavailableError(HfsaeError, FileNotFoundError):
    """The named dataset cannot be read: missing local files, or a Hub dataset while offline."""


class TextColumnError(HfsaeError, LookupError):
    """The dataset has no column with the requested name."""


class TextValueError(HfsaeError, ValueError):
    """A document is not text: a number, a list or another non-string value where text was expected."""


# Bytes read from the start of a local text file to tell a binary file from text.
SNIFF_BYTES = 8192


def _checked_text(value, where: str):
    """`value` when it is a string or empty (None, ''); TextValueError otherwise."""
    if value is None or isinstance(value, str):
        return value
    raise TextValueError(
        f"{where} holds {type(value).__name__} values (such as {str(value)[:60]!r}), not text; name a column "
        "of strings (text_column=, --text-column)."
    )


def _refuse_binary(files: list[str]) -> None:
    """A text-format file (json, jsonl, txt, csv) that holds NUL bytes is binary, not text: say so by name."""
    for file in files:
        if Path(file).suffix.lower() != ".parquet":
            with open(file, "rb") as handle:
                if b"\0" in handle.read(SNIFF_BYTES):
                    raise DatasetUnavailableError(
                        f"{file} holds NUL bytes, so it is not a {Path(file).suffix} text file; give UTF-8 text "
                        f"files ({'/'.join(FILE_BUILDERS)})."
                    )


def _hub_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _local_files(name: str) -> list[str] | None:
    """The files a local dataset name stands for (a file, a folder, a glob); None if not local."""
    path = Path(name).expanduser()
    if path.is_file():
        return [str(path)]
    if path.is_dir():
        return sorted(str(p) for p in path.rglob("*") if p.suffix.lower() in FILE_BUILDERS)
    if glob.has_magic(name):
        return sorted(glob.glob(os.path.expanduser(name), recursive=True))
    looks_local = name.startswith((".", "/", "~")) or Path(name).suffix.lower() in FILE_BUILDERS
    if looks_local:
        raise DatasetUnavailableError(
            f"No such file or folder: {name!r}. Give an existing path to "
            f"{'/'.join(FILE_BUILDERS)} files, a Hub dataset name, or 'builtin'."
        )
    return None


@dataclass(frozen=True)
class TextSource:
    """Documents of text: the built-in corpus, a `datasets` Hub name, or local files.

    `split` picks this library's held-out split ("train", "test" or "all"), decided per document by
    a hash of its text; `hub_split` is the split of the underlying `datasets` dataset.
    """

    dataset: str = "builtin"
    """"builtin", a Hub dataset name ("user/name"), or local json/jsonl/parquet/txt/csv files
    (a file, a folder or a glob)."""
    text_column: str = "text"
    """Column holding the text of each document."""
    split: Literal["train", "test", "all"] = "train"
    """Held-out split: "train" for training, "test" for evaluation on text the SAE never saw."""
    test_fraction: float = 0.05
    """Fraction of documents that go to the "test" split."""
    hub_config: str | None = None
    """Configuration name of a Hub dataset, if it has several."""
    hub_split: str = "train"
    """Split of the `datasets` dataset to read."""
    streaming: bool = False
    """Stream the dataset instead of downloading and converting it first."""
    shuffle_seed: int | None = 0
    """Shuffle the documents with this seed (streaming: within a 10,000-document buffer); None
    keeps the stored order."""

    def __post_init__(self):
        if self.split not in ("train", "test", "all"):
            raise ValueError(f"split must be 'train', 'test' or 'all'; got {self.split!r}.")
        if not 0.0 <= self.test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in [0, 1); got {self.test_fraction}.")

    def describe(self) -> dict:
        """What determines the documents this source yields (part of activation-cache keys)."""
        described = asdict(self)
        if is_builtin(self.dataset):  # the corpus is this Python's own docs and sources
            described["python"] = sys.version
        files = None if is_builtin(self.dataset) else _local_files(self.dataset)
        if files:  # a local file that changes must not reuse a cache built from its old content
            described["files"] = [(f, os.path.getsize(f), os.path.getmtime(f)) for f in files]
        return described

    @cached_property
    def _dataset(self):
        """The `datasets` Dataset or IterableDataset, shuffled, with only the text column."""
        import datasets

        if is_builtin(self.dataset):
            loaded = datasets.Dataset.from_dict({"text": builtin_texts()})
            column = "text"
        else:
            loaded = self._load_named(datasets)
            column = self.text_column
            names = loaded.column_names
            if names is None:  # a streamed json dataset learns its columns from the first row
                names = list(next(iter(loaded)).keys())
            if column not in names:
                raise TextColumnError(
                    f"Dataset {self.dataset!r} has no column {column!r}; its columns are {names}. "
                    f"Pass text_column= one of them."
                )
        loaded = loaded.select_columns([column])
        if column != "text":
            loaded = loaded.rename_column(column, "text")
        if self.shuffle_seed is not None:
            if isinstance(loaded, datasets.IterableDataset):
                loaded = loaded.shuffle(seed=self.shuffle_seed, buffer_size=10_000)
            else:
                loaded = loaded.shuffle(seed=self.shuffle_seed)
        return loaded

    def _load_named(self, datasets):
        files = _local_files(self.dataset)
        if files is not None:
            if not files:
                raise DatasetUnavailableError(f"{self.dataset!r} holds no {'/'.join(FILE_BUILDERS)} files.")
            builders = {FILE_BUILDERS.get(Path(f).suffix.lower()) for f in files}
            if len(builders) != 1 or None in builders:
                raise DatasetUnavailableError(
                    f"{self.dataset!r} mixes file types {sorted(str(b) for b in builders)}; give files "
                    f"of one type ({'/'.join(FILE_BUILDERS)})."
                )
            _refuse_binary(files)
            # A malformed file reaches the user as one error naming the parser's complaint; `datasets` would
            # also log its own multi-line account of the same failure first.
            verbosity = datasets.logging.get_verbosity()
            datasets.logging.set_verbosity(datasets.logging.CRITICAL)
            try:
                return datasets.load_dataset(builders.pop(), data_files=files, split="train", streaming=self.streaming)
            except StopIteration:  # `datasets` finds no first row to infer the columns from
                raise ValueError(f"Dataset {self.dataset!r} holds no documents (empty files); give files with text.") from None
            finally:
                datasets.logging.set_verbosity(verbosity)
        try:
            return datasets.load_dataset(self.dataset, self.hub_config, split=self.hub_split, streaming=self.streaming)
        except (ConnectionError, OSError) as err:
            if _hub_offline():
                raise DatasetUnavailableError(
                    f"Cannot load Hub dataset {self.dataset!r}: HF_HUB_OFFLINE=1 and it is not in the "
                    f"local cache. Unset HF_HUB_OFFLINE to download it, or give local files or 'builtin'."
                ) from err
            raise DatasetUnavailableError(f"Cannot load Hub dataset {self.dataset!r}: {err}") from err
        except datasets.exceptions.DatasetNotFoundError as err:
            raise DatasetUnavailableError(
                f"No dataset {self.dataset!r} on the Hub (or it is private). Check the name, or give "
                f"local files or 'builtin'."
            ) from err

    def in_split(self, text: str) -> bool:
        """Whether a document belongs to this source's split (a hash of its text decides)."""
        if self.split == "all":
            return True
        digest = hashlib.blake2b(text.encode("utf-8", "replace"), digest_size=8).digest()
        is_test = int.from_bytes(digest, "big") / 2**64 < self.test_fraction
        return is_test == (self.split == "test")

    def documents(self, start: int = 0) -> Iterator[tuple[int, str]]:
        """(index, text) of each document in the split, from index `start` of the shuffled dataset."""
        loaded = self._dataset
        if start:
            loaded = loaded.skip(start)
        index = start
        for batch in loaded.iter(batch_size=DOCUMENT_BATCH):
            for text in batch["text"]:
                text = _checked_text(text, f"Column {self.text_column!r} of dataset {self.dataset!r}")
                if text and self.in_split(text):
                    yield index, text
                index += 1


@dataclass(frozen=True, order=True)
class TextPosition:
    """Where a context starts in the packed token stream: document index, token offset within it."""

    document: int = 0
    token: int = 0


def _separator(tokenizer) -> list[int]:
    for token_id in (tokenizer.eos_token_id, tokenizer.bos_token_id):
        if token_id is not None:
            return [token_id]
    return []


def token_contexts(
    text: TextSource | Iterable[str],
    tokenizer,
    context_size: int = 64,
    *,
    start: TextPosition = TextPosition(),
) -> Iterator[tuple[TextPosition, list[int]]]:
    """Documents packed end to end (separated by the end-of-text token) and cut into contexts of
    `context_size` tokens; yields (position of the context's first token, token ids).

    `text` is a TextSource or in-memory documents (an iterable of strings, numbered from 0).

    A document longer than a context spills into the next one; the last partial context is dropped.
    Restarting from a yielded position yields the same contexts again.
    """
    if context_size < 2:
        raise ValueError(f"context_size must be at least 2; got {context_size}.")
    separator = _separator(tokenizer)
    pending: list[int] = []
    # `origins` marks where each document's tokens begin in `pending`, to name a context's start.
    origins: list[tuple[int, int, int]] = []  # (offset in pending, document index, first token)
    if isinstance(text, TextSource):
        documents = text.documents(start.document)
    elif isinstance(text, str):
        raise TypeError("token_contexts takes a TextSource or an iterable of documents, not one string; wrap it in a list.")
    else:
        documents = (
            (index, doc) for index, doc in enumerate(text) if index >= start.document and _checked_text(doc, f"Document {index}")
        )
    while True:
        batch = [doc for _, doc in zip(range(DOCUMENT_BATCH), documents)]
        if not batch:
            return
        encoded = tokenizer([doc_text for _, doc_text in batch], add_special_tokens=False, verbose=False)["input_ids"]
        for (index, _), ids in zip(batch, encoded):
            ids = list(ids) + separator
            skip = start.token if index == start.document else 0
            origins.append((len(pending), index, skip))
            pending.extend(ids[skip:])
        consumed = 0
        while len(pending) - consumed >= context_size:
            yield _position_at(consumed, origins), pending[consumed : consumed + context_size]
            consumed += context_size
        del pending[:consumed]
        origins = [(offset - consumed, index, first) for offset, index, first in origins]
        # Keep only the document that holds the first pending token and those after it.
        while len(origins) > 1 and origins[1][0] <= 0:
            origins.pop(0)


def _position_at(offset: int, origins: list[tuple[int, int, int]]) -> TextPosition:
    for start_offset, index, first in reversed(origins):
        if start_offset <= offset:
            return TextPosition(index, first + offset - start_offset)
    raise AssertionError("a pending token outside every document")  # unreachable: origins[0] is at 0
