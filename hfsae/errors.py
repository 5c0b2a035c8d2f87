"""The root of hfsae's exceptions: `except hfsae.errors.HfsaeError` catches every error hfsae raises on purpose.

Each concrete error also keeps the built-in base that says what kind of mistake it is (ValueError for a bad value,
FileNotFoundError for a missing file, LookupError for a missing name), so code written against those still works.
"""


class HfsaeError(Exception):
    """Base of every exception class defined in hfsae."""


class CheckpointError(HfsaeError, ValueError):
    """A checkpoint or saved training state is missing, incomplete or corrupt (the trainer's checkpoints and the
    sharded saves of `hfsae.distributed` alike)."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint folder, or a file it should hold, is not there."""
