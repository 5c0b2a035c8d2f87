"""BatchTopK: the batch-level selection, the threshold it estimates, thresholded inference, against dense torch."""

import pytest
import torch
from safetensors.torch import load_file

from hfsae import TopKSAE, TopKSAEConfig
from hfsae.modeling import THRESHOLD_DECAY


def make(n_latents=64, k=4, d_in=16, seed=0, **options) -> TopKSAE:
    torch.manual_seed(seed)
    sae = TopKSAE(TopKSAEConfig(d_in=d_in, n_latents=n_latents, k=k, architecture="batchtopk", **options))
    with torch.no_grad():
        sae.b_enc.normal_(0, 0.1)
        sae.b_pre.normal_(0, 0.1)
    return sae


def dense_preactivations(sae, x):
    return (x - sae.b_pre) @ sae.W_enc.T + sae.b_enc


def dense_batch_topk(sae, x):
    """The reference: keep the k·rows largest pre-activations of the flattened batch (ReLU after)."""
    pre = dense_preactivations(sae, x)
    flat = pre.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.topk(sae.config.k * x.shape[0]).indices] = True
    return torch.where(keep.reshape(pre.shape), pre, 0.0).relu()


def as_dense(code, n_latents):
    return code.to_dense(n_latents)


def test_training_keeps_the_k_times_batch_largest_of_the_batch_and_matches_dense_autograd():
    sae = make()
    x = torch.randn(32, 16)
    x[3] *= 20  # one row holds far more than 4k of the batch's top: the candidate width must grow
    output = sae(x)
    reference = dense_batch_topk(sae, x.clone())
    torch.testing.assert_close(as_dense(output.code, 64), reference.detach())
    counts = (output.code.values > 0).sum(1)
    assert counts[3] > 16 and counts.sum() == 4 * 32  # per-token L0 varies, the mean is k

    output.loss.backward()
    grads = {name: p.grad.clone() for name, p in sae.named_parameters()}
    sae.zero_grad()
    x_hat = dense_batch_topk(sae, x) @ sae.W_dec + sae.b_pre
    loss = (x - x_hat).pow(2).sum(-1).mean() / (x - x.mean(0)).pow(2).sum(-1).mean()
    loss.backward()
    torch.testing.assert_close(output.loss, loss)
    for name, p in sae.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name)


def test_the_threshold_is_the_running_mean_of_each_batchs_smallest_kept_activation():
    sae = make()
    batches = [torch.randn(32, 16) for _ in range(3)]
    smallest = []
    for x in batches:
        kept = dense_batch_topk(sae, x).detach()
        smallest.append(kept[kept > 0].min())
        sae(x)
    torch.testing.assert_close(sae.threshold, torch.stack(smallest).mean())  # a plain mean at first
    assert THRESHOLD_DECAY == 0.999 and int(sae.threshold_updates) == 3
    with torch.no_grad():
        sae.threshold_updates.fill_(10_000)  # long into training: an exponential average
        before = sae.threshold.clone()
        x = torch.randn(32, 16)
        kept = dense_batch_topk(sae, x)
        sae(x)
    torch.testing.assert_close(sae.threshold, before + (1 - THRESHOLD_DECAY) * (kept[kept > 0].min() - before))


def test_inference_keeps_every_preactivation_above_the_threshold_or_each_rows_topk_when_asked():
    sae = make()
    sae(torch.randn(64, 16))  # training mode: estimates the threshold
    sae.eval()
    x = torch.randn(40, 16)
    with torch.no_grad():
        pre = dense_preactivations(sae, x)
        expected = torch.where(pre > sae.threshold, pre, 0.0).relu()
        code = sae.encode(x)
        torch.testing.assert_close(as_dense(code, 64), expected)
        torch.testing.assert_close(sae.decode(code), expected @ sae.W_dec + sae.b_pre)
        torch.testing.assert_close(sae(x).x_hat, expected @ sae.W_dec + sae.b_pre)
        top = pre.topk(4, dim=1)
        per_token = torch.zeros_like(pre).scatter(1, top.indices, top.values.relu())
        torch.testing.assert_close(as_dense(sae.encode(x, k=4), 64), per_token)
        sae.config.inference = "topk"
        torch.testing.assert_close(as_dense(sae.encode(x), 64), per_token)


def test_an_untrained_threshold_is_refused_at_inference():
    sae = make().eval()
    with pytest.raises(ValueError, match="no threshold yet"):
        sae.encode(torch.randn(4, 16))


def test_the_threshold_is_saved_with_the_weights_and_loads_back(tmp_path):
    sae = make()
    sae(torch.randn(64, 16))
    sae.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    assert set(tensors) == {"W_enc", "b_enc", "W_dec", "b_pre", "threshold"}  # the update count is training state
    loaded = TopKSAE.from_pretrained(tmp_path)
    assert loaded.config.architecture == "batchtopk" and not loaded.training
    torch.testing.assert_close(loaded.threshold, sae.threshold)
    x = torch.randn(8, 16)
    torch.testing.assert_close(loaded(x).x_hat, sae.eval()(x).x_hat)
