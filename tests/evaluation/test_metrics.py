"""Reconstruction metrics against hand-computed values and the SAE itself."""

import pytest
import torch

from hfsae import TopKSAE, TopKSAEConfig
from hfsae.evaluation.metrics import (
    CHUNK_ROWS,
    cosine,
    dead_fraction,
    fvu_of,
    l0,
    progressive_fvu,
    progressive_ks,
    reconstruction_metrics,
)


def test_fvu_of_a_hand_made_batch_is_error_over_variance():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # mean [2, 1]; Σ‖x − mean‖² = 2 + 2 = 4
    x_hat = torch.tensor([[1.0, 1.0], [3.0, 2.0]])  # Σ‖x − x_hat‖² = 1
    assert fvu_of(x_hat, x) == pytest.approx(0.25)


def test_l0_counts_non_zero_values_per_token():
    values = torch.tensor([[2.0, 1.0, 0.0], [3.0, 0.5, 0.1]])
    assert l0(values).item() == pytest.approx(2.5)


def test_cosine_of_parallel_and_orthogonal_rows_averages_one_and_zero():
    x = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    x_hat = torch.tensor([[5.0, 0.0], [1.0, 0.0]])
    assert cosine(x, x_hat).item() == pytest.approx(0.5)


def test_dead_fraction_counts_latents_never_selected_above_the_threshold():
    indices = torch.tensor([[0, 1], [2, 1]])
    values = torch.tensor([[1.0, 0.0005], [0.2, 0.0]])  # latent 1 only ever below 1e-3
    assert dead_fraction(indices, values, n_latents=5) == pytest.approx(3 / 5)


def test_progressive_ks_are_quarter_to_four_times_k_capped_at_n_latents():
    assert progressive_ks(32, 8192) == [8, 16, 32, 64, 128]
    assert progressive_ks(4, 10) == [1, 2, 4, 8, 10]


def tiny_sae(seed=0, **config):
    torch.manual_seed(seed)
    return TopKSAE(TopKSAEConfig(d_in=6, n_latents=20, k=4, **config)).eval()


def test_metrics_over_more_rows_than_one_chunk_equal_those_of_one_forward():
    sae = tiny_sae(normalize="layer_norm")
    x = torch.randn(CHUNK_ROWS + 37, 6) * 3 + 1
    metrics, code = reconstruction_metrics(sae, x)
    with torch.no_grad():
        output = sae(x)
        x_hat = output.x_hat.double()
    expected_fvu = ((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    assert metrics.n_tokens == x.shape[0]
    assert metrics.fvu == pytest.approx(expected_fvu, rel=1e-5)
    assert metrics.explained_variance == pytest.approx(1 - expected_fvu, abs=1e-6)
    assert metrics.cosine == pytest.approx(cosine(x, output.x_hat).item(), rel=1e-5)
    assert metrics.l0 == pytest.approx(l0(output.code.values).item())
    assert metrics.dead_fraction == pytest.approx(dead_fraction(output.code.indices, output.code.values, 20))
    torch.testing.assert_close(code.indices, output.code.indices)
    assert metrics.progressive[4] == pytest.approx(metrics.fvu, rel=1e-6)
    assert list(metrics.progressive) == [1, 2, 4, 8, 16]


def test_progressive_fvu_with_fewer_latents_is_the_fvu_of_that_code():
    sae = tiny_sae()
    x = torch.randn(30, 6)
    with torch.no_grad():
        x_hat = sae.decode(sae.encode(x, k=2)).double()
    expected = ((x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum()).item()
    assert progressive_fvu(sae, x, [2])[2] == pytest.approx(expected, rel=1e-6)


def test_metrics_of_fewer_than_two_rows_say_so():
    with pytest.raises(ValueError, match=r"need activations \[tokens ≥ 2, d_in\]; got shape \(1, 6\)"):
        reconstruction_metrics(tiny_sae(), torch.randn(1, 6))
