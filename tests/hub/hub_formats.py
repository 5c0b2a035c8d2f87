"""Test helpers: random weights that make format conventions matter, and comparisons of top-k codes."""

from __future__ import annotations

import torch



def random_weights(*, d_in: int = 16, n_latents: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    """Encoder [n, d], non-zero biases, and decoder rows [n, d] with norms spread over 0.3–3 (not unit)."""
    generator = torch.Generator().manual_seed(seed)
    W_dec = torch.randn(n_latents, d_in, generator=generator)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True) * (0.3 + 2.7 * torch.rand(n_latents, 1, generator=generator))
    return {
        "W_enc": torch.randn(n_latents, d_in, generator=generator) / d_in**0.5,
        "b_enc": 0.3 * torch.randn(n_latents, generator=generator),
        "W_dec": W_dec,
        "b_pre": 0.5 * torch.randn(d_in, generator=generator),
    }


def random_activations(*, tokens: int = 40, d_in: int = 16, seed: int = 1) -> torch.Tensor:
    """Activations with a per-token offset and spread, so that normalisation conventions change results."""
    generator = torch.Generator().manual_seed(seed)
    offset = 2.0 * torch.randn(tokens, 1, generator=generator)
    scale = 0.5 + 3.0 * torch.rand(tokens, 1, generator=generator)
    return offset + scale * torch.randn(tokens, d_in, generator=generator)


def dense_topk(preactivations: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """ReLU(TopK_k(h)) as (dense z [tokens, n], indices [tokens, k], values [tokens, k])."""
    top = preactivations.topk(k, dim=-1)
    values = torch.relu(top.values)
    z = torch.zeros_like(preactivations).scatter(-1, top.indices, values)
    return z, top.indices, values


def assert_same_codes(code, indices: torch.Tensor, values: torch.Tensor) -> None:
    """The same latents with the same values in each row, in any order."""
    ours = torch.sort(code.values, dim=-1).values
    theirs = torch.sort(values, dim=-1).values
    torch.testing.assert_close(ours, theirs)
    positive = values > 0  # latents at zero contribute nothing; ties among them may pick other indices
    for row in range(indices.shape[0]):
        expected = set(indices[row][positive[row]].tolist())
        got = set(code.indices[row][code.values[row] > 0].tolist())
        assert got == expected, f"row {row}: latents {sorted(got)} != {sorted(expected)}"


def from_format(name: str, path, **options):
    """One SAE of format `name` at `path`, converted and built as a TopKSAE (what loading does once files are fetched)."""
    from pathlib import Path

    from hfsae import TopKSAE
    from hfsae.hub.build import build
    from hfsae.hub.formats import BY_NAME, Context

    return build(TopKSAE, BY_NAME[name].convert(Path(path), Context(str(path), "", options)), where=path)
