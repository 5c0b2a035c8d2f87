"""ActivationSource: harvested rows, shuffling, resume, and the on-disk cache."""

import json

import pytest
import torch

from hfsae.activations.cache import ActivationCache
from hfsae.activations.hook_points import capture
from hfsae.activations.source import ActivationSource, TextSource
from hfsae.activations.text import token_contexts

HOOK_POINTS = ["layers.1.resid_post", "layers.0.mlp_out"]


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"Paragraph {i}. " + "The quick brown fox jumps. " * (1 + i % 5)}) for i in range(60)]
    path.write_text("\n".join(lines) + "\n")
    return TextSource(str(path), split="all")


def make_source(tiny_lm, tiny_tokenizer, text, **options):
    defaults = {
        "text": text,
        "context_size": 16,
        "contexts_per_forward": 5,
        "batch_tokens": 40,
        "buffer_tokens": 100,
        "n_tokens": 1000,
    }
    return ActivationSource(tiny_lm("llama"), tiny_tokenizer, HOOK_POINTS, **{**defaults, **options})


def sorted_rows(rows):
    """Rows in a canonical order (by their bytes), to compare two shuffles of the same rows."""
    keys = [bytes(row.numpy().tobytes()) for row in rows]
    return rows[sorted(range(len(rows)), key=keys.__getitem__)]


def test_batches_hold_the_captured_activations_of_the_contexts_in_shuffled_order(tiny_lm, tiny_tokenizer, text):
    source = make_source(tiny_lm, tiny_tokenizer, text, buffer_tokens=10_000, n_tokens=600)
    batches = list(source)
    contexts = [ids for _, ids in token_contexts(text, tiny_tokenizer, context_size=16)][:40]
    with torch.no_grad():
        expected = capture(tiny_lm("llama"), torch.tensor(contexts), HOOK_POINTS)
    for name in HOOK_POINTS:
        harvested = torch.cat([batch[name] for batch in batches])
        direct = expected[name][:, 1:, :].reshape(-1, 32)  # first position excluded: 15 rows a context
        assert harvested.shape == (600, 32) and harvested.dtype == torch.float32
        assert not torch.equal(harvested, direct)  # shuffled
        torch.testing.assert_close(sorted_rows(harvested), sorted_rows(direct), rtol=1e-5, atol=1e-5)


def test_the_hook_points_of_a_batch_describe_the_same_tokens(tiny_lm, tiny_tokenizer, text):
    # Row i of every hook point comes from the same context position: find each row of one hook
    # point among the directly captured rows, and the other hook point must match at that place.
    source = make_source(tiny_lm, tiny_tokenizer, text, exclude_first_position=False, n_tokens=320)
    batch = next(iter(source))
    contexts = torch.tensor([ids for _, ids in token_contexts(text, tiny_tokenizer, context_size=16)][:20])
    with torch.no_grad():
        expected = {name: t.reshape(-1, 32) for name, t in capture(tiny_lm("llama"), contexts, HOOK_POINTS).items()}
    for row in range(len(batch["layers.1.resid_post"])):
        distance = (expected["layers.1.resid_post"] - batch["layers.1.resid_post"][row]).abs().sum(-1)
        place = int(distance.argmin())
        torch.testing.assert_close(batch["layers.0.mlp_out"][row], expected["layers.0.mlp_out"][place])


def test_every_batch_is_full_except_the_last_and_the_total_is_n_tokens(tiny_lm, tiny_tokenizer, text):
    sizes = [len(batch["layers.1.resid_post"]) for batch in make_source(tiny_lm, tiny_tokenizer, text, n_tokens=1010)]
    assert sizes == [40] * 25 + [10]


def test_iteration_ends_with_the_text_when_n_tokens_is_unbounded(tiny_lm, tiny_tokenizer, text):
    n_contexts = len(list(token_contexts(text, tiny_tokenizer, context_size=16)))
    batches = list(make_source(tiny_lm, tiny_tokenizer, text, n_tokens=None))
    assert sum(len(batch["layers.1.resid_post"]) for batch in batches) == n_contexts * 15


def test_the_same_seed_gives_the_same_batches_and_another_seed_a_different_order(tiny_lm, tiny_tokenizer, text):
    first = list(make_source(tiny_lm, tiny_tokenizer, text, n_tokens=200))
    again = list(make_source(tiny_lm, tiny_tokenizer, text, n_tokens=200))
    other = list(make_source(tiny_lm, tiny_tokenizer, text, n_tokens=200, seed=1))
    assert all(torch.equal(a["layers.1.resid_post"], b["layers.1.resid_post"]) for a, b in zip(first, again))
    assert not torch.equal(first[0]["layers.1.resid_post"], other[0]["layers.1.resid_post"])


@pytest.mark.parametrize("buffer_tokens", [100, 150])  # 150: a block boundary on a forward boundary
def test_a_resumed_source_yields_exactly_the_remaining_batches(tiny_lm, tiny_tokenizer, text, buffer_tokens):
    # 5 contexts of 15 rows per forward pass = 75 rows; blocks of 120 or 160 rows.
    if buffer_tokens == 150:
        options = {"buffer_tokens": 150, "batch_tokens": 75}  # blocks of 150 = 2 forward passes exactly
    else:
        options = {"buffer_tokens": 100}
    full = list(make_source(tiny_lm, tiny_tokenizer, text, n_tokens=600, **options))
    # Cuts inside a block, on the last batch of a block, and on the first batch of the next.
    for cut in sorted({1, 2, 3, 4, 5, len(full) - 1}):
        interrupted = make_source(tiny_lm, tiny_tokenizer, text, n_tokens=600, **options)
        batches = iter(interrupted)
        for _ in range(cut):
            next(batches)
        state = json.loads(json.dumps(interrupted.state_dict()))  # a checkpoint stores it as JSON
        resumed = make_source(tiny_lm, tiny_tokenizer, text, n_tokens=600, **options)
        resumed.load_state_dict(state)
        rest = list(resumed)
        assert len(rest) == len(full) - cut
        for got, expected in zip(rest, full[cut:]):
            for name in HOOK_POINTS:
                assert torch.equal(got[name], expected[name])


def test_resuming_with_a_different_shuffle_is_refused(tiny_lm, tiny_tokenizer, text):
    state = make_source(tiny_lm, tiny_tokenizer, text).state_dict()
    with pytest.raises(ValueError, match=r"saved data position used seed=0, this source has seed=4"):
        make_source(tiny_lm, tiny_tokenizer, text, seed=4).load_state_dict(state)


def test_batches_are_ordinary_tensors_usable_in_autograd(tiny_lm, tiny_tokenizer, text):
    batch = next(iter(make_source(tiny_lm, tiny_tokenizer, text)))["layers.1.resid_post"]
    weight = torch.ones(32, 4, requires_grad=True)
    (batch @ weight).sum().backward()  # an inference-mode tensor could not be saved for backward
    assert not batch.is_inference()
    torch.testing.assert_close(weight.grad[:, 0], batch.sum(0))


def test_cached_activations_give_the_same_batches_as_harvesting(tiny_lm, tiny_tokenizer, text, tmp_path):
    expected = list(make_source(tiny_lm, tiny_tokenizer, text))
    building = make_source(tiny_lm, tiny_tokenizer, text, cache_dir=tmp_path / "cache")
    built = list(building)
    reading = make_source(tiny_lm, tiny_tokenizer, text, cache_dir=tmp_path / "cache")
    assert reading.cache.complete and reading.cache.folder == building.cache.folder
    reading.model = None  # reading from the cache must not run the model
    read = list(reading)
    for batches in (built, read):
        assert len(batches) == len(expected)
        for got, want in zip(batches, expected):
            for name in HOOK_POINTS:
                assert torch.equal(got[name], want[name])


def test_a_cached_source_resumes_exactly(tiny_lm, tiny_tokenizer, text, tmp_path):
    full = list(make_source(tiny_lm, tiny_tokenizer, text, cache_dir=tmp_path))
    interrupted = make_source(tiny_lm, tiny_tokenizer, text, cache_dir=tmp_path)
    batches = iter(interrupted)
    for _ in range(7):
        next(batches)
    resumed = make_source(tiny_lm, tiny_tokenizer, text, cache_dir=tmp_path)
    resumed.load_state_dict(interrupted.state_dict())
    assert all(torch.equal(a["layers.0.mlp_out"], b["layers.0.mlp_out"]) for a, b in zip(resumed, full[7:]))


def test_a_different_hook_point_or_token_count_uses_a_different_cache_entry(tiny_lm, tiny_tokenizer, text, tmp_path):
    base = make_source(tiny_lm, tiny_tokenizer, text, cache_dir=tmp_path).cache.folder
    other_count = make_source(tiny_lm, tiny_tokenizer, text, cache_dir=tmp_path, n_tokens=999).cache.folder
    other_point = ActivationSource(
        tiny_lm("llama"),
        tiny_tokenizer,
        ["layers.2.resid_post"],
        text=text,
        context_size=16,
        n_tokens=1000,
        cache_dir=tmp_path,
    ).cache.folder
    other_model = ActivationSource(
        tiny_lm("qwen2"), tiny_tokenizer, HOOK_POINTS, text=text, context_size=16, n_tokens=1000, cache_dir=tmp_path
    ).cache.folder
    assert len({base, other_count, other_point, other_model}) == 4


def test_an_unfinished_or_damaged_cache_is_never_read_and_gets_rebuilt(tiny_lm, tiny_tokenizer, text, tmp_path):
    expected = list(make_source(tiny_lm, tiny_tokenizer, text))
    source = make_source(tiny_lm, tiny_tokenizer, text, cache_dir=tmp_path, n_tokens=1000)
    list(source)
    shard = source.cache.folder / "shard_00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])  # truncated, as by a crash or a full disk
    assert not source.cache.complete
    (source.cache.folder / "manifest.json").unlink()  # and an entry without its manifest
    rebuilt = make_source(tiny_lm, tiny_tokenizer, text, cache_dir=tmp_path, n_tokens=1000)
    assert not rebuilt.cache.complete
    batches = list(rebuilt)
    assert rebuilt.cache.complete
    assert all(torch.equal(a["layers.1.resid_post"], b["layers.1.resid_post"]) for a, b in zip(batches, expected))


def test_a_crash_while_building_leaves_no_cache_entry(tmp_path):
    def crashing_blocks():
        yield {"layers.1.resid_post": torch.ones(5, 32)}
        raise KeyboardInterrupt

    cache = ActivationCache(tmp_path, {"any": "description"})
    with pytest.raises(KeyboardInterrupt):
        cache.build(crashing_blocks(), shard_rows=2)
    assert not cache.complete and list(tmp_path.iterdir()) == []  # the staging folder is gone too


def test_the_cache_reads_any_row_range_across_shards(tmp_path):
    rows = torch.arange(50 * 3, dtype=torch.float32).reshape(50, 3)
    cache = ActivationCache(tmp_path, {"rows": 50})
    cache.build(({"x": rows[i : i + 7]} for i in range(0, 50, 7)), shard_rows=8)
    assert cache.n_rows == 50 and len(cache.manifest["shards"]) == 7
    for start, stop in [(0, 50), (3, 9), (8, 16), (15, 41), (49, 50)]:
        assert torch.equal(cache.read(start, stop)["x"], rows[start:stop])


def test_a_cache_without_n_tokens_is_refused(tiny_lm, tiny_tokenizer, text, tmp_path):
    with pytest.raises(ValueError, match=r"activation cache needs n_tokens"):
        make_source(tiny_lm, tiny_tokenizer, text, cache_dir=tmp_path, n_tokens=None)


def test_an_unknown_hook_point_fails_when_the_source_is_built(tiny_lm, tiny_tokenizer, text):
    from hfsae.activations.hook_points import HookPointError

    with pytest.raises(HookPointError, match=r"has 3 layers \(0–2\); got layer 3"):
        ActivationSource(tiny_lm("llama"), tiny_tokenizer, "layers.3.resid_post", text=text)


def test_a_second_loop_continues_where_the_first_stopped(tiny_lm, tiny_tokenizer, text):
    full = list(make_source(tiny_lm, tiny_tokenizer, text, n_tokens=400))
    source = make_source(tiny_lm, tiny_tokenizer, text, n_tokens=400)
    batches = iter(source)
    first = [next(batches) for _ in range(3)]
    rest = list(source)
    assert len(first) + len(rest) == len(full) and list(source) == []
    assert all(torch.equal(a["layers.1.resid_post"], b["layers.1.resid_post"]) for a, b in zip(first + rest, full))
