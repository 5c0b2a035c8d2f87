"""Variant tests run on one CPU thread: tiny tensors gain nothing from a second one on a shared machine."""

import pytest


@pytest.fixture(autouse=True)
def _variants_on_one_thread(one_thread):
    yield
