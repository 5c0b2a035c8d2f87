"""TrainConfig: defaults, the learning-rate rule and schedule, validation, one home per field."""

import dataclasses
import inspect

import pytest

from hfsae.configuration import TopKSAEConfig
from hfsae.training.config import SAE_OPTION_FIELDS, TrainConfig, attribute_docs


def test_the_default_learning_rate_follows_the_scaling_rule():
    config = TrainConfig()
    assert config.learning_rate_for(2**14) == pytest.approx(2e-4)
    assert config.learning_rate_for(2**16) == pytest.approx(1e-4)
    assert TrainConfig(learning_rate=3e-4).learning_rate_for(2**16) == 3e-4


def test_warmup_and_decay_shape_the_learning_rate_linearly():
    config = TrainConfig(batch_size=100, train_tokens=1000, harvest_tokens=100, warmup_steps=2, decay_steps=4)
    factors = [config.learning_rate_factor(step) for step in range(config.steps)]
    assert factors == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.75, 0.5, 0.25])


def test_sae_options_take_type_default_and_doc_from_topksaeconfig():
    topk_fields = {f.name: f for f in dataclasses.fields(TopKSAEConfig)}
    topk_docs = attribute_docs(TopKSAEConfig)
    train_fields = {f.name: f for f in dataclasses.fields(TrainConfig)}
    for name in SAE_OPTION_FIELDS:
        assert train_fields[name].default == topk_fields[name].default
        assert train_fields[name].metadata["help"] == topk_docs[name]
        # Declared with TopKSAEConfig's type. The class annotations, not Field.type: HfArgumentParser
        # rewrites TrainConfig's Field.type in place (resolved, and `int | None` → int for argparse).
        assert inspect.get_annotations(TrainConfig)[name] == inspect.get_annotations(TopKSAEConfig)[name], name


def test_every_train_config_field_is_documented():
    undocumented = [f.name for f in dataclasses.fields(TrainConfig) if not f.metadata.get("help")]
    assert undocumented == []


def test_sae_config_carries_the_sweep_sizes_options_and_provenance():
    config = TrainConfig(normalize="layer_norm", aux_k_coef=0.0, context_size=32, dataset="my/data")
    sae_config = config.sae_config(d_in=576, hook_point="layers.3.resid_post", n_latents=1024, k=16)
    assert (sae_config.d_in, sae_config.n_latents, sae_config.k) == (576, 1024, 16)
    assert (sae_config.normalize, sae_config.aux_k_coef) == ("layer_norm", 0.0)
    assert (sae_config.hook_point, sae_config.context_size, sae_config.dataset) == ("layers.3.resid_post", 32, "my/data")


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(ema_decay=1.0), r"ema_decay=1.0: choose a value in \[0, 1\)"),
        (dict(k=[4096]), r"k must be in 1..4095"),
        (dict(hook_points=[]), r"hook_points=\[\]"),
        (dict(normalize="batch"), r"normalize must be one of none, layer_norm, unit_norm, dataset_scale"),
        (dict(mixed_precision="fp8"), r"mixed_precision='fp8'"),
    ],
)
def test_an_invalid_option_raises_a_value_error_that_quotes_it(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)


def test_the_config_round_trips_through_json():
    config = TrainConfig(n_latents=[64, 128], k=[4], hook_points=["layers.1.resid_post"], learning_rate=1e-3)
    assert TrainConfig.from_json_string(config.to_json_string()) == config


def test_resuming_names_every_changed_option_that_would_change_the_run():
    saved = TrainConfig(seed=0, learning_rate=1e-3, train_tokens=4096, batch_size=1024)
    TrainConfig(seed=0, learning_rate=1e-3, train_tokens=8192, batch_size=1024, save_steps=3).check_resumable(saved, where="c")
    with pytest.raises(ValueError, match=r"normalize='layer_norm' \(was 'none'\), learning_rate=0.002 \(was 0.001\), seed=1 \(was 0\)\. "):
        TrainConfig(seed=1, learning_rate=2e-3, normalize="layer_norm", train_tokens=4096, batch_size=1024).check_resumable(
            saved, where="c"
        )


@pytest.mark.parametrize("options", [dict(streaming=True), dict(decay_steps=2)])
def test_train_tokens_may_not_change_on_resume_when_streaming_or_decaying(options):
    saved = TrainConfig(train_tokens=4096, batch_size=1024, **options)
    with pytest.raises(ValueError, match=r"train_tokens=8192 \(was 4096\)\. Resume with the options"):
        TrainConfig(train_tokens=8192, batch_size=1024, **options).check_resumable(saved, where="c")
    TrainConfig(train_tokens=4096, batch_size=1024, save_steps=2, **options).check_resumable(saved, where="c")


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(buffer_tokens=1000), r"buffer_tokens=1000: shuffle at least batch_size rows"),
        (dict(latent_shards=3), r"latent_shards=3: use a positive number that divides every n_latents"),
        (dict(latent_shards=2, distribute_saes=True), r"choose one"),
        (dict(model_dtype="int8"), r"model_dtype='int8'"),
    ],
)
def test_bad_scale_options_raise_one_line_errors(options, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**options)
