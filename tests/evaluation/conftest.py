"""A tiny random Llama and a matching tiny SAE for the evaluation tests."""

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from hfsae import TopKSAE, TopKSAEConfig

HOOK_POINT = "layers.0.resid_post"


@pytest.fixture(scope="session")
def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=48,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


@pytest.fixture()
def tiny_sae():
    torch.manual_seed(1)
    config = TopKSAEConfig(d_in=16, n_latents=40, k=4, hook_point=HOOK_POINT, normalize="layer_norm")
    return TopKSAE(config).eval()


@pytest.fixture(scope="session")
def tokens():
    return torch.randint(0, 48, (3, 12), generator=torch.Generator().manual_seed(2))
