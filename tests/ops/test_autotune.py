"""Paths chosen by measurement: the chooser, its cache and overrides, and the paths it chooses between."""

import json
import time

import pytest
import torch

from hfsae import TopKSAE, TopKSAEConfig
from hfsae.ops import autotune, auxk, backend_for, cpu, reference


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Each test with its own empty cache file and no overrides."""
    monkeypatch.setenv("HFSAE_CACHE", str(tmp_path))
    for name in ("HFSAE_AUTOTUNE", "HFSAE_AUXK_PATH", "HFSAE_ENCODER_PATH"):
        monkeypatch.delenv(name, raising=False)
    autotune.forget()
    yield tmp_path
    autotune.forget()


def fakes(calls: list | None = None):
    """Two paths with known costs: "slow" does 20 ms more work than "fast"."""

    def make(name, seconds):
        def run():
            if calls is not None:
                calls.append(name)
            time.sleep(seconds)

        return run

    return lambda: {"slow": make("slow", 0.02), "fast": make("fast", 0.0)}


def never_measured():
    raise AssertionError("a measurement ran although the choice was already made")


def test_the_chooser_picks_the_faster_of_two_paths():
    for order in (("slow", "fast"), ("fast", "slow")):
        autotune.forget()
        assert autotune.choose("op", f"key-{order[0]}", order, fakes(), fallback="slow") == "fast"


def test_a_measured_choice_round_trips_through_the_cache_file(private_cache):
    calls = []
    assert autotune.choose("op", "shape-a", ("slow", "fast"), fakes(calls), fallback="slow") == "fast"
    assert calls, "the first choice is measured"
    saved = json.loads((private_cache / autotune.CACHE_FILE).read_text())
    assert saved == {"op|shape-a": "fast"}
    autotune.forget()  # a new process: only the file remembers
    assert autotune.choose("op", "shape-a", ("slow", "fast"), never_measured, fallback="slow") == "fast"


def test_a_choice_is_logged_once_with_both_timings(caplog):
    with caplog.at_level("INFO", logger=autotune.__name__):
        for _ in range(3):
            assert autotune.choose("op", "shape", ("slow", "fast"), fakes(), fallback="slow") == "fast"
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1
    assert "op path for shape: fast (slow " in messages[0] and "$HFSAE_OP_PATH" in messages[0]


def test_measure_keeps_each_candidates_fastest_run():
    durations = iter([0.0, 0.03, 0.0, 0.03])  # a warm-up, then 3 rounds, two of them slowed down

    def run():
        time.sleep(next(durations))

    assert autotune.measure({"only": run}, repeats=3)["only"] < 0.02  # not the median (0.03)


def test_the_environment_variable_wins_over_the_cache(monkeypatch):
    autotune.choose("auxk", "shape", ("dense", "sparse"), lambda: {"dense": lambda: None, "sparse": lambda: time.sleep(0.02)}, fallback="sparse")
    monkeypatch.setenv("HFSAE_AUXK_PATH", "sparse")
    assert autotune.choose("auxk", "shape", ("dense", "sparse"), never_measured, fallback="dense") == "sparse"


def test_the_option_wins_over_the_environment_variable(monkeypatch):
    monkeypatch.setenv("HFSAE_AUXK_PATH", "sparse")
    autotune.set_path("auxk", "dense")
    assert autotune.choose("auxk", "shape", ("dense", "sparse"), never_measured, fallback="sparse") == "dense"
    autotune.set_path("auxk", None)
    assert autotune.choose("auxk", "shape", ("dense", "sparse"), never_measured, fallback="dense") == "sparse"


def test_an_unknown_forced_path_names_the_valid_ones(monkeypatch):
    monkeypatch.setenv("HFSAE_AUXK_PATH", "magic")
    with pytest.raises(ValueError, match=r"Unknown auxk path 'magic'.*HFSAE_AUXK_PATH.*dense, sparse"):
        autotune.choose("auxk", "shape", ("dense", "sparse"), never_measured, fallback="dense")


def test_measuring_off_takes_the_fallback_and_remembers_nothing(monkeypatch, private_cache):
    monkeypatch.setenv("HFSAE_AUTOTUNE", "0")
    assert autotune.choose("op", "shape", ("slow", "fast"), never_measured, fallback="slow") == "slow"
    assert not (private_cache / autotune.CACHE_FILE).exists()


def test_work_too_small_to_time_takes_the_fallback():
    assert autotune.choose("op", "tiny", ("slow", "fast"), never_measured, fallback="slow", worth_measuring=False) == "slow"


def test_a_bad_autotune_setting_says_what_is_valid(monkeypatch):
    monkeypatch.setenv("HFSAE_AUTOTUNE", "yes")
    with pytest.raises(ValueError, match=r"HFSAE_AUTOTUNE must be 0 .* or 1 .*got 'yes'"):
        autotune.choose("op", "shape", ("slow", "fast"), fakes(), fallback="slow")


def test_a_damaged_cache_file_is_measured_again(private_cache):
    (private_cache / autotune.CACHE_FILE).write_text("[1, 2]")
    assert autotune.choose("op", "shape", ("slow", "fast"), fakes(), fallback="slow") == "fast"


def test_shapes_within_a_power_of_two_share_a_size_class():
    assert autotune.size_class(16384) == autotune.size_class(20000) == 16384
    assert autotune.size_class(1) == 1 and autotune.size_class(0) == 0


# ---- the AuxK paths -------------------------------------------------------------------------------


def auxk_step(path, *, ops_backend="cpu", seed=0):
    """Loss and gradients of one TopKSAE step with AuxK firing, the AuxK path forced."""
    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=24, n_latents=300, k=4, k_aux=40))
    sae.ops_backend = ops_backend
    with torch.no_grad():  # half the latents' pre-activations pushed below 0: AuxK must skip them exactly
        sae.b_enc.copy_(torch.where(torch.arange(300) % 2 == 0, -1.0, 0.2))
    x = torch.randn(64, 24)
    dead_mask = torch.arange(300) % 3 != 0  # 200 dead: 40 of them a row, many ≤ 0
    if path is not None:
        autotune.set_path("auxk", path)
    output = sae(x, dead_mask=dead_mask)
    output.loss.backward()
    autotune.set_path("auxk", None)
    return [output.loss.detach(), output.aux_loss.detach()] + [p.grad for p in (sae.W_enc, sae.b_enc, sae.W_dec, sae.b_pre)]


def test_both_auxk_paths_give_the_reference_backends_loss_and_gradients():
    expected = auxk_step("dense", ops_backend="reference")
    for path in auxk.PATHS:
        for got, want in zip(auxk_step(path), expected):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_auxk_measures_both_paths_once_and_keeps_the_choice(monkeypatch, private_cache):
    monkeypatch.setattr(auxk, "MIN_MEASURED_WORK", 0)
    ops = backend_for("cpu", "cpu")
    x = torch.randn(32, 16)
    choice = auxk.auxk_path(x, 120, 8, ops, fallback="dense")
    assert choice in auxk.PATHS
    saved = json.loads((private_cache / autotune.CACHE_FILE).read_text())
    assert list(saved.values()) == [choice] and list(saved)[0].startswith("auxk|cpu:")


def test_positive_prefix_keeps_every_positive_value_and_one_column_at_least():
    from hfsae.modeling import _positive_prefix

    values = torch.tensor([[0.5, -1.0, 2.0], [-3.0, -0.1, -2.0]])
    indices = torch.tensor([[7, 8, 9], [1, 2, 3]])
    kept_values, kept_indices = _positive_prefix(values, indices)
    assert torch.equal(kept_values, torch.tensor([[2.0, 0.5], [-0.1, -2.0]]))
    assert torch.equal(kept_indices, torch.tensor([[9, 7], [2, 3]]))
    none_positive = _positive_prefix(values[1:], indices[1:])
    assert none_positive[0].shape == (1, 1)
    all_positive = torch.tensor([[0.5, 3.0], [1.0, 0.0]])  # a full row: nothing to cut, order kept
    kept_values, kept_indices = _positive_prefix(all_positive, indices[:, :2])
    assert torch.equal(kept_values, all_positive) and torch.equal(kept_indices, indices[:, :2])


# ---- the CPU encoder's block size -----------------------------------------------------------------


@pytest.mark.parametrize("block_elements", cpu.TILE_ELEMENT_CHOICES + (777,))
def test_every_block_size_selects_the_reference_top_k(block_elements):
    g = torch.Generator().manual_seed(block_elements)
    x, W_enc, b_enc = torch.randn(40, 12, generator=g), torch.randn(5000, 12, generator=g), torch.randn(5000, generator=g)
    aux_mask = torch.rand(5000, generator=g) < 0.2
    got = cpu._encode_topk(x, W_enc, b_enc, 6, aux_mask, 30, block_elements)
    expected = reference.encode_topk(x, W_enc, b_enc, 6, aux_mask=aux_mask, k_aux=30)
    torch.testing.assert_close(got.values, expected.values)
    torch.testing.assert_close(got.aux_values.sort(1).values, expected.aux_values.sort(1).values)


def test_the_block_size_is_measured_among_the_choices_when_the_work_is_large(monkeypatch, private_cache):
    monkeypatch.setattr(cpu, "MIN_MEASURED_WORK", 0)
    x, W_enc = torch.randn(16, 8), torch.randn(256, 8)
    assert cpu.tile_elements(x, W_enc, 4) in cpu.TILE_ELEMENT_CHOICES
    assert list(json.loads((private_cache / autotune.CACHE_FILE).read_text()))[0].startswith("cpu_encoder_tile|")
