"""Training unit tests run on one CPU thread; the slow end-to-end runs keep torch's default.

Shared inputs of the end-to-end runs: a tiny random Llama saved as a model folder, and a small corpus.
"""

import json

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread(request):
    # Tiny tensors: a second OpenMP thread only adds contention on a shared 2-core machine.
    if request.node.get_closest_marker("slow"):
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def tiny_lm_dir(tmp_path, tiny_lm, tiny_tokenizer):
    folder = tmp_path / "tiny-llama"
    tiny_lm("llama").save_pretrained(folder)
    tiny_tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture
def small_corpus(tmp_path):
    """~20k characters of varied text (bytes are tokens for the tiny tokenizer) in a JSON-lines file."""
    words = "sparse autoencoders learn latents from the activations of language models at one hook point".split()
    lines = [
        json.dumps({"text": " ".join(words[(i * 7 + j) % len(words)] for j in range(i % 13 + 8))}) for i in range(300)
    ]
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(lines))
    return path
