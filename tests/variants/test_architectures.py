"""The variant seam: one map of architectures, old configs unchanged, unsupported paths refused by name."""

import json

import pytest
import torch

from hfsae import TopKSAE, TopKSAEConfig
from hfsae.configuration import ARCHITECTURES
from hfsae.distributed.grid import ProcessGrid
from hfsae.distributed.sharded import ShardedTopKSAE, UnsupportedVariantError, check_shardable
from hfsae.modeling import SELECTIONS, topk_losses
from hfsae.training.config import TrainConfig


def test_every_architecture_has_a_selection_and_the_default_is_topk():
    assert set(ARCHITECTURES) == set(SELECTIONS)
    assert TopKSAEConfig().architecture == "topk"


def test_a_config_json_written_before_architectures_loads_as_the_same_topk_sae(tmp_path):
    torch.manual_seed(0)
    sae = TopKSAE(TopKSAEConfig(d_in=8, n_latents=32, k=4))
    sae.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    for name in ("architecture", "d_out", "target_hook_point", "encoder_subtracts_decoder_bias", "skip_connection", "inference"):
        config.pop(name)  # what an older hfsae wrote
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = TopKSAE.from_pretrained(tmp_path)
    assert loaded.config.architecture == "topk" and not loaded.config.is_transcoder
    x = torch.randn(5, 8)
    torch.testing.assert_close(loaded(x).x_hat, sae.eval()(x).x_hat)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(architecture="jumprelu"), "architecture must be one of topk, batchtopk"),
        (dict(architecture="batchtopk", multi_topk_coef=0.125), "Multi-TopK does not apply"),
        (dict(inference="threshold"), "inference='threshold' needs a threshold"),
        (dict(inference="dense"), "inference must be one of"),
        (dict(target_hook_point="layers.0.mlp_out", normalize="layer_norm"), "a transcoder"),
        (dict(d_out=4, encoder_subtracts_decoder_bias=True), "needs d_out == d_in"),
    ],
)
def test_a_variant_the_config_cannot_describe_is_a_one_line_error(options, message):
    with pytest.raises(ValueError, match=message):
        TopKSAEConfig(d_in=8, n_latents=32, k=4, **options)


def test_the_loss_is_one_function_both_forwards_call():
    # The sharded module's forward and TopKSAE.forward call topk_losses: here its sum is checked by hand.
    config = TopKSAEConfig(d_in=4, n_latents=8, k=2, multi_topk_coef=0.5, aux_k_coef=0.25)
    target, x_hat, x_multi, residual_hat = torch.randn(4, 6, 4).unbind(0)
    loss, main, multi, aux = topk_losses(config, target, x_hat, x_hat_multi=x_multi, residual_hat=residual_hat, aux=True)
    fvu = lambda a, b: (b - a).pow(2).sum(-1).mean() / (b - b.mean(0)).pow(2).sum(-1).mean()  # noqa: E731
    torch.testing.assert_close(main, fvu(x_hat, target))
    torch.testing.assert_close(multi, fvu(x_multi, target))
    torch.testing.assert_close(aux, fvu(residual_hat, target - x_hat))
    torch.testing.assert_close(loss, main + 0.5 * multi + 0.25 * aux)
    assert topk_losses(config, target, x_hat, aux=True)[3].item() == 0.0  # no dead latent: AuxK is 0


@pytest.mark.parametrize(
    "options, name",
    [(dict(architecture="batchtopk"), "architecture='batchtopk'"), (dict(d_out=6, target_hook_point="t"), "transcoder")],
)
def test_the_sharded_path_refuses_a_variant_it_cannot_run_by_name(options, name):
    config = TopKSAEConfig(d_in=8, n_latents=32, k=4, **options)
    with pytest.raises(UnsupportedVariantError, match=name):
        check_shardable(config)
    with pytest.raises(UnsupportedVariantError, match=name):
        ShardedTopKSAE(config, ProcessGrid.single())
    check_shardable(TopKSAEConfig(d_in=8, n_latents=32, k=4))  # plain TopK shards


def test_train_config_carries_the_variant_into_each_sae_config():
    config = TrainConfig(
        hook_points=["model.layers.1.mlp:input"], target_hook_points=["layers.1.mlp_out"], architecture="batchtopk",
        skip_connection=True,
    )  # fmt: skip
    assert config.harvested_hook_points() == ["model.layers.1.mlp:input", "layers.1.mlp_out"]
    sae = config.sae_config(d_in=8, d_out=8, hook_point="model.layers.1.mlp:input", n_latents=32, k=4)
    assert (sae.architecture, sae.target_hook_point, sae.skip_connection, sae.subtracts_b_pre) == (
        "batchtopk", "layers.1.mlp_out", True, False
    )
    with pytest.raises(ValueError, match="target_hook_points"):
        TrainConfig(hook_points=["a", "b"], target_hook_points=["c"])
    with pytest.raises(ValueError, match="Multi-TopK"):
        TrainConfig(architecture="batchtopk", multi_topk_coef=0.125)
