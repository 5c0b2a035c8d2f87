"""ActivationSource: harvested rows, the refilled shuffle buffer, exact resume, and the activation cache."""

import json

import pytest
import torch

from hfsae.activations.cache import ActivationCache, CacheMismatchError, CorruptCacheError
from hfsae.activations.hook_points import capture
from hfsae.activations.source import SPREAD, ActivationSource, TextSource
from hfsae.activations.text import token_contexts

HOOK_POINTS = ["layers.1.resid_post", "layers.0.mlp_out"]
FIRST = HOOK_POINTS[0]
# Contexts of 16 tokens, 15 rows each (position 0 is left out); 2 contexts (30 rows) a forward pass;
# a buffer of 120 rows leaves blocks of 28 rows, so a batch of 20 spans blocks and stages.
OPTIONS = {"context_size": 16, "contexts_per_forward": 2, "batch_tokens": 20, "buffer_tokens": 120, "n_tokens": 600}

# Forward passes of a tiny model: a second OpenMP thread makes them slower on a shared machine.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def text(tmp_path):
    path = tmp_path / "docs.jsonl"
    lines = [json.dumps({"text": f"Paragraph {i}. " + "The quick brown fox jumps. " * (1 + i % 5)}) for i in range(60)]
    path.write_text("\n".join(lines) + "\n")
    return TextSource(str(path), split="all")


@pytest.fixture
def make_source(tiny_lm, tiny_tokenizer, text):
    def make(model="llama", hook_points=HOOK_POINTS, **options):
        return ActivationSource(tiny_lm(model), tiny_tokenizer, hook_points, text=text, **{**OPTIONS, **options})

    return make


def direct_rows(tiny_lm, tiny_tokenizer, text, n_contexts, hook_points=HOOK_POINTS):
    """The rows of the first n_contexts contexts captured in one plain forward pass, first position left out."""
    contexts = torch.tensor([ids for _, ids in token_contexts(text, tiny_tokenizer, context_size=16)][:n_contexts])
    with torch.no_grad():
        captured = capture(tiny_lm("llama"), contexts, hook_points)
    return {name: captured[name][:, 1:].reshape(-1, captured[name].shape[-1]) for name in hook_points}


def sorted_rows(rows):
    """Rows in a canonical order (by their bytes), to compare two shuffles of the same rows."""
    keys = [row.numpy().tobytes() for row in rows]
    return rows[sorted(range(len(rows)), key=keys.__getitem__)]


def assert_same_batches(got, expected):
    assert len(got) == len(expected)
    for a, b in zip(got, expected):
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name])


def batches_and_states(source):
    """Every batch of a source and the state it saved right after that batch (as a checkpoint stores it: JSON)."""
    return [(batch, json.loads(json.dumps(source.state_dict()))) for batch in source]


def resumed_from(make_source, state, **options):
    resumed = make_source(**options)
    resumed.load_state_dict(state)
    return list(resumed)


# ---- what the batches hold


def test_batches_hold_the_captured_activations_of_the_contexts_in_shuffled_order(make_source, tiny_lm, tiny_tokenizer, text):
    batches = list(make_source())
    direct = direct_rows(tiny_lm, tiny_tokenizer, text, 40)  # 40 contexts × 15 rows = 600
    for name in HOOK_POINTS:
        harvested = torch.cat([batch[name] for batch in batches])
        assert harvested.shape == (600, 32) and harvested.dtype == torch.float32
        assert not torch.equal(harvested, direct[name])  # shuffled
        torch.testing.assert_close(sorted_rows(harvested), sorted_rows(direct[name]), rtol=1e-5, atol=1e-5)


def test_the_hook_points_of_a_batch_describe_the_same_tokens(make_source, tiny_lm, tiny_tokenizer, text):
    # Find each row of one hook point among the directly captured rows: the other hook point's row
    # must be the one captured at that same place.
    direct = direct_rows(tiny_lm, tiny_tokenizer, text, 40)
    for batch in list(make_source())[::7]:
        for row in range(len(batch[FIRST])):
            place = int((direct[FIRST] - batch[FIRST][row]).abs().sum(-1).argmin())
            torch.testing.assert_close(batch["layers.0.mlp_out"][row], direct["layers.0.mlp_out"][place])


def test_a_batch_mixes_rows_from_many_contexts(make_source, tiny_lm, tiny_tokenizer, text):
    # In harvest order 40 rows come from 3 or 4 contexts; the buffer mixes SPREAD blocks of 132 rows.
    direct = direct_rows(tiny_lm, tiny_tokenizer, text, 40)[FIRST]
    contexts = []
    for batch in make_source(buffer_tokens=400, batch_tokens=40):
        places = torch.cdist(batch[FIRST], direct).argmin(dim=1)
        contexts.append(len(set((places // 15).tolist())))
    assert len(contexts) == 15 and min(contexts) >= 8, contexts


def test_every_batch_is_full_except_the_last_and_the_total_is_n_tokens(make_source):
    sizes = [len(batch[FIRST]) for batch in make_source(n_tokens=1010)]
    assert sizes == [20] * 50 + [10]
    sizes = [len(batch[FIRST]) for batch in make_source(n_tokens=610, epochs=2)]
    assert sum(sizes) == 1220 and set(sizes[:-1]) == {20}


def test_iteration_ends_with_the_text_when_n_tokens_is_unbounded(make_source, tiny_tokenizer, text):
    n_contexts = len(list(token_contexts(text, tiny_tokenizer, context_size=16)))
    source = make_source(n_tokens=None)
    assert sum(len(batch[FIRST]) for batch in source) == n_contexts * 15
    assert source.tokens_yielded == n_contexts * 15


def test_each_epoch_holds_the_same_rows_in_a_new_order(make_source):
    one = torch.cat([batch[FIRST] for batch in make_source(n_tokens=300, batch_tokens=30)])
    two = torch.cat([batch[FIRST] for batch in make_source(n_tokens=300, batch_tokens=30, epochs=2)])
    assert len(two) == 600 and not torch.equal(two[:300], two[300:])
    # Rows of the next epoch may leave while the last of this one still wait in the buffer: compare all rows.
    assert torch.equal(sorted_rows(two), sorted_rows(torch.cat([one, one])))


def test_the_same_seed_gives_the_same_batches_and_another_seed_a_different_order(make_source):
    first, again, other = list(make_source()), list(make_source()), list(make_source(seed=1))
    assert_same_batches(again, first)
    assert not torch.equal(first[0][FIRST], other[0][FIRST])
    everything = lambda batches: sorted_rows(torch.cat([batch[FIRST] for batch in batches]))  # noqa: E731
    assert torch.equal(everything(first), everything(other))  # the same rows


def test_batches_are_ordinary_tensors_usable_in_autograd(make_source):
    batch = next(iter(make_source()))[FIRST]
    weight = torch.ones(32, 4, requires_grad=True)
    (batch @ weight).sum().backward()  # an inference-mode tensor could not be saved for backward
    assert not batch.is_inference()
    torch.testing.assert_close(weight.grad[:, 0], batch.sum(0))


# ---- resume


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"buffer_tokens": 150, "batch_tokens": 30},  # blocks of 32 rows; batches of one forward pass
        {"n_tokens": 290, "epochs": 3},  # epochs end mid-pass; blocks straddle epoch boundaries
    ],
    ids=["blocks-across-passes", "batch-of-a-pass", "three-epochs"],
)
def test_a_resumed_source_yields_exactly_the_remaining_batches_at_every_cut(make_source, options):
    recorded = batches_and_states(make_source(**options))
    full = [batch for batch, _ in recorded]
    assert len(full) > 3 * SPREAD
    # Every cut: within the first SPREAD stages (the buffer still filling), at block and epoch edges,
    # and after the last batch.
    for cut in range(1, len(full) + 1):
        assert_same_batches(resumed_from(make_source, recorded[cut - 1][1], **options), full[cut:])


def test_a_second_loop_continues_where_the_first_stopped(make_source):
    full = list(make_source())
    source = make_source()
    batches = iter(source)
    first = [next(batches) for _ in range(3)]
    rest = list(source)
    assert_same_batches(first + rest, full)
    assert list(source) == []


@pytest.mark.parametrize("name, value", [("seed", 4), ("batch_tokens", 30), ("buffer_tokens", 200)])
def test_resuming_with_a_different_shuffle_or_size_is_refused(make_source, name, value):
    state = make_source().state_dict()
    with pytest.raises(ValueError, match=rf"saved data position used {name}=\d+, this source has {name}={value}"):
        make_source(**{name: value}).load_state_dict(state)


# ---- memory


def test_the_buffer_never_holds_more_than_buffer_tokens_rows_on_a_long_stream(make_source):
    source = make_source(n_tokens=None, epochs=2, buffer_tokens=200, batch_tokens=25)
    most = 0
    for _ in source:
        most = max(most, source.buffered_rows)
    assert source.tokens_yielded > 20 * 200  # many buffers' worth of rows went through
    assert 100 < source.peak_buffered_rows <= 200 and most <= source.peak_buffered_rows


def test_a_buffer_smaller_than_a_batch_or_with_no_room_to_shuffle_is_refused(make_source):
    with pytest.raises(ValueError, match=r"buffer_tokens=30 is smaller than batch_tokens=40"):
        make_source(buffer_tokens=30, batch_tokens=40)
    with pytest.raises(ValueError, match=r"buffer_tokens=50 leaves no room to shuffle .* give buffer_tokens ≥ 58"):
        make_source(buffer_tokens=50, batch_tokens=20)


def test_an_unknown_hook_point_fails_when_the_source_is_built(make_source):
    from hfsae.activations.hook_points import HookPointError

    with pytest.raises(HookPointError, match=r"has 3 layers \(0–2\); got layer 3"):
        make_source(hook_points="layers.3.resid_post")


def test_a_text_without_one_context_is_a_value_error_naming_the_dataset(tiny_lm, tiny_tokenizer, tmp_path):
    path = tmp_path / "short.jsonl"
    path.write_text(json.dumps({"text": "too short"}) + "\n")
    source = ActivationSource(tiny_lm("llama"), tiny_tokenizer, FIRST, text=TextSource(str(path), split="all"), **OPTIONS)
    with pytest.raises(ValueError, match=r"short.jsonl.* no context of 16 tokens"):
        list(source)


# ---- the activation cache


def test_a_cached_run_gives_the_harvested_rows_each_epoch_and_the_same_batches_every_run(make_source, tmp_path):
    harvested = sorted_rows(torch.cat([batch[FIRST] for batch in make_source(n_tokens=300, batch_tokens=30)]))
    cached = {"cache_dir": tmp_path / "cache", "n_tokens": 300, "epochs": 2, "batch_tokens": 30}
    building = make_source(**cached)
    built = list(building)
    assert (tmp_path / "cache/manifest.json").is_file()
    rows = torch.cat([batch[FIRST] for batch in built])
    assert torch.equal(sorted_rows(rows), sorted_rows(torch.cat([harvested, harvested])))

    reading = make_source(**cached)
    reading.model = None  # reading a complete cache must not run the model
    assert_same_batches(list(reading), built)
    assert reading.forward_tokens == 0


def test_a_cached_source_resumes_exactly(make_source, tmp_path):
    cached = {"cache_dir": tmp_path / "cache", "n_tokens": 300, "epochs": 2}
    recorded = batches_and_states(make_source(**cached))
    full = [batch for batch, _ in recorded]
    for cut in (1, 3, len(full) // 2, len(full) - 1, len(full)):
        assert_same_batches(resumed_from(make_source, recorded[cut - 1][1], **cached), full[cut:])


def test_the_cache_stores_half_precision_when_asked(make_source, tmp_path):
    full = torch.cat([b[FIRST] for b in make_source(n_tokens=300, cache_dir=tmp_path / "f32")])
    half = torch.cat([b[FIRST] for b in make_source(n_tokens=300, cache_dir=tmp_path / "bf16", cache_dtype="bfloat16")])
    assert half.dtype == torch.float32  # batches are float32 whatever the storage
    assert torch.equal(sorted_rows(half), sorted_rows(full.bfloat16().float()))
    assert (tmp_path / "bf16/shard_00000.safetensors").stat().st_size < 0.6 * (tmp_path / "f32/shard_00000.safetensors").stat().st_size


def test_a_folder_of_shards_without_a_manifest_is_never_read_as_a_cache(make_source, tmp_path):
    cache = tmp_path / "cache"
    list(make_source(n_tokens=300, cache_dir=cache))
    (cache / "manifest.json").unlink()  # as if the build died before its last write
    with pytest.raises(FileExistsError, match=r"without manifest.json, so not an activation cache"):
        list(make_source(n_tokens=300, cache_dir=cache))


def test_a_crash_while_building_leaves_no_cache(tmp_path):
    def crashing_blocks():
        yield {FIRST: torch.ones(5, 32)}
        raise KeyboardInterrupt

    cache = ActivationCache(tmp_path / "cache", {"any": "description"})
    with pytest.raises(KeyboardInterrupt):
        cache.build(crashing_blocks(), shard_rows=2)
    assert not cache.complete and list(tmp_path.iterdir()) == []  # the staging folder is gone too


def test_a_shard_that_fails_its_checksum_is_a_corrupt_cache_error(make_source, tmp_path):
    cache = tmp_path / "cache"
    list(make_source(n_tokens=300, cache_dir=cache))
    shard = cache / "shard_00000.safetensors"
    data = bytearray(shard.read_bytes())
    data[-5] ^= 0xFF  # one flipped bit of a float: still a readable safetensors file
    shard.write_bytes(bytes(data))
    with pytest.raises(CorruptCacheError, match=r"shard_00000.safetensors fails its sha256 check; delete .* to rebuild"):
        list(make_source(n_tokens=300, cache_dir=cache))


@pytest.mark.parametrize(
    "options, field",
    [
        ({"hook_points": ["layers.2.resid_post", "layers.0.mlp_out"]}, "hook_points"),
        ({"model": "qwen2"}, "model.name"),
        ({"cache_dtype": "float16"}, "storage_dtype"),
        ({"n_tokens": 330}, "n_tokens"),
        ({"context_size": 20}, "context_size"),
    ],
)
def test_a_cache_built_from_other_inputs_is_refused_naming_the_field(make_source, tmp_path, options, field):
    list(make_source(n_tokens=300, cache_dir=tmp_path / "cache"))
    with pytest.raises(CacheMismatchError, match=rf"was built from another [^(]*\b{field}\b"):
        list(make_source(**{"n_tokens": 300, "cache_dir": tmp_path / "cache", **options}))


def test_a_cache_of_a_model_in_another_dtype_is_refused(make_source, tiny_lm, tmp_path):
    import copy

    list(make_source(n_tokens=300, cache_dir=tmp_path / "cache"))
    half = copy.deepcopy(tiny_lm("llama")).to(torch.bfloat16)
    source = ActivationSource(half, make_source().tokenizer, HOOK_POINTS, text=make_source().text,
                              **{**OPTIONS, "n_tokens": 300, "cache_dir": tmp_path / "cache"})  # fmt: skip
    with pytest.raises(CacheMismatchError, match=r"another model.dtype.*torch.bfloat16"):
        list(source)


def test_the_cache_reads_any_row_range_of_a_shard(tmp_path):
    rows = torch.arange(50 * 3, dtype=torch.float32).reshape(50, 3)
    cache = ActivationCache(tmp_path / "cache", {"rows": 50})
    cache.build(({"x": rows[i : i + 7]} for i in range(0, 50, 7)), shard_rows=8)
    assert cache.n_rows == 50 and [shard["rows"] for shard in cache.shards] == [8] * 6 + [2]
    for shard, start, stop in [(0, 0, 8), (1, 3, 7), (6, 0, 2), (3, 5, 6)]:
        assert torch.equal(cache.read(shard, start, stop)["x"], rows[8 * shard + start : 8 * shard + stop])
    reopened = ActivationCache(tmp_path / "cache", {"rows": 50})
    assert reopened.complete and reopened.n_rows == 50
