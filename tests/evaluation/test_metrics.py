"""Reconstruction metrics against hand-computed values and the SAE itself."""

import pytest
import torch

from hfsae import TopKSAE, TopKSAEConfig
from hfsae.evaluation.metrics import (
    ReconstructionMetrics,
    cosine,
    dead_fraction,
    explained_variance,
    fvu,
    l0,
    progressive_fvu,
    progressive_ks,
)
from hfsae.training.losses import normalized_mse


def test_fvu_of_a_hand_made_batch_is_error_over_variance():
    x = torch.tensor([[1.0, 0.0], [3.0, 2.0]])  # mean [2, 1]; Σ‖x − mean‖² = 2 + 2 = 4
    x_hat = torch.tensor([[1.0, 1.0], [3.0, 2.0]])  # Σ‖x − x_hat‖² = 1
    assert fvu(x, x_hat).item() == pytest.approx(0.25)
    assert explained_variance(x, x_hat).item() == pytest.approx(0.75)


def test_fvu_agrees_with_the_training_loss():
    x, x_hat = torch.randn(50, 8), torch.randn(50, 8)
    torch.testing.assert_close(fvu(x, x_hat), normalized_mse(x_hat, x))


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


def test_progressive_fvu_at_k_equals_the_fvu_of_the_default_code():
    sae = tiny_sae()
    x = torch.randn(30, 6)
    result = progressive_fvu(sae, x)
    assert list(result) == [1, 2, 4, 8, 16]
    with torch.no_grad():
        assert result[4] == pytest.approx(fvu(x, sae(x).x_hat).item(), rel=1e-5)


def test_accumulated_metrics_over_batches_equal_the_metrics_of_the_whole_stream():
    sae = tiny_sae(normalize="layer_norm")
    x = torch.randn(40, 6) * 3 + 1
    metrics = ReconstructionMetrics(n_latents=20)
    with torch.no_grad():
        for batch in x.split(7):
            code = sae.encode(batch)
            metrics.update(batch, code, sae.decode(code), {2: sae.decode(sae.encode(batch, k=2))})
        code = sae.encode(x)
        x_hat = sae.decode(code)
    assert metrics.n_tokens == 40
    assert metrics.fvu == pytest.approx(fvu(x, x_hat).item(), rel=1e-5)
    assert metrics.explained_variance == pytest.approx(1 - fvu(x, x_hat).item(), rel=1e-5)
    assert metrics.cosine == pytest.approx(cosine(x, x_hat).item(), rel=1e-5)
    assert metrics.l0 == pytest.approx(l0(code.values).item())
    assert metrics.dead_fraction == pytest.approx(dead_fraction(code.indices, code.values, 20))
    assert metrics.progressive[2] == pytest.approx(progressive_fvu(sae, x, [2])[2], rel=1e-5)


def test_metrics_before_any_batch_say_so():
    with pytest.raises(ValueError, match="No tokens"):
        _ = ReconstructionMetrics(n_latents=3).fvu
