"""The CPU fast path's sparse ops equal the dense reference, on odd sizes too; every backend keeps the one contract."""

import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hfsae.ops import BACKENDS, SparseBackend, backend_for, reference, selected_preactivations, sparse_decode

cpu = backend_for("cpu", "cpu")

sizes = st.tuples(
    st.integers(1, 9),  # batch
    st.integers(2, 70),  # n_rows (latents)
    st.integers(1, 13),  # d
    st.integers(1, 6),  # k
    st.integers(0, 2**31 - 1),  # seed
)


def random_case(batch, n_rows, d, k, seed):
    g = torch.Generator().manual_seed(seed)
    k = min(k, n_rows)
    indices = torch.stack([torch.randperm(n_rows, generator=g)[:k] for _ in range(batch)])
    values = torch.rand(batch, k, generator=g)
    weight = torch.randn(n_rows, d, generator=g)
    dense = torch.randn(batch, d, generator=g)
    return indices, values, weight, dense


def contract_parameters(function) -> list[tuple[str, object]]:
    """(name, default) of each parameter but `self`: what a backend's function must take, in order."""
    return [(p.name, p.default) for p in inspect.signature(function).parameters.values() if p.name != "self"]


@pytest.mark.parametrize("name", BACKENDS)
def test_every_backend_keeps_the_sparse_backend_contract(name, request):
    backend = request.getfixturevalue("triton_ops") if name == "triton" else backend_for("cpu", name)
    assert isinstance(backend, SparseBackend)
    for function in ("encode_topk", "decode", "scatter_outer", "gather_dot"):
        assert contract_parameters(getattr(backend, function)) == contract_parameters(getattr(SparseBackend, function))


def test_the_contract_check_sees_a_backend_that_breaks_it():
    class Renamed:  # gather_dot's arguments in another order: still "an instance", but the signatures differ
        encode_topk, decode, scatter_outer = reference.encode_topk, reference.decode, reference.scatter_outer

        @staticmethod
        def gather_dot(dense, indices, weight):
            return reference.gather_dot(indices, dense, weight)

    assert isinstance(Renamed(), SparseBackend)
    assert contract_parameters(Renamed.gather_dot) != contract_parameters(SparseBackend.gather_dot)
    assert not isinstance(object(), SparseBackend)


@settings(max_examples=60, deadline=None)
@given(sizes)
def test_decode_equals_the_dense_product(case):
    indices, values, weight, _ = random_case(*case)
    torch.testing.assert_close(cpu.decode(indices, values, weight), reference.decode(indices, values, weight))


@settings(max_examples=60, deadline=None)
@given(sizes)
def test_scatter_outer_equals_the_transposed_dense_product(case):
    indices, values, weight, dense = random_case(*case)
    n = weight.shape[0]
    torch.testing.assert_close(
        cpu.scatter_outer(indices, values, dense, n), reference.scatter_outer(indices, values, dense, n)
    )


@settings(max_examples=60, deadline=None)
@given(sizes)
def test_gather_dot_equals_the_dense_product_at_the_selected_entries(case):
    indices, _, weight, dense = random_case(*case)
    torch.testing.assert_close(cpu.gather_dot(indices, dense, weight), reference.gather_dot(indices, dense, weight))


def test_duplicate_indices_in_a_row_add_up():
    indices = torch.tensor([[3, 3, 1]])
    values = torch.tensor([[1.0, 2.0, 0.5]])
    weight = torch.randn(5, 4)
    torch.testing.assert_close(cpu.decode(indices, values, weight), (3 * weight[3] + 0.5 * weight[1])[None])


# (elements a block, fewest whole rows, latents a tile): one block; row blocks of whole rows; latent tiles
# that divide into screening groups, that do not, and that hold so many masked latents the AuxK
# candidates are cut back on the way.
BLOCKINGS = [(1 << 24, 512, 4096), (3000, 4, 4096), (3000, 100, 64), (3000, 100, 96), (700, 10_000, 40)]


@pytest.mark.parametrize("blocking", BLOCKINGS)
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize(
    "batch,n,d,k,k_aux", [(1, 7, 3, 1, 2), (13, 301, 29, 5, 17), (64, 1000, 16, 32, 50), (8, 200, 8, 100, 20)]
)
def test_blocked_encode_topk_selects_the_reference_sets(monkeypatch, blocking, with_bias, batch, n, d, k, k_aux):
    for name, value in zip(("ENCODE_TILE_ELEMENTS", "MIN_WHOLE_ROWS", "ENCODE_TILE_LATENTS"), blocking):
        monkeypatch.setattr(cpu, name, value)
    g = torch.Generator().manual_seed(batch + n)
    x, W_enc = torch.randn(batch, d, generator=g), torch.randn(n, d, generator=g)
    b_enc = torch.randn(n, generator=g) if with_bias else None
    aux_mask = torch.rand(n, generator=g) < 0.3
    expected = reference.encode_topk(x, W_enc, b_enc, k, aux_mask=aux_mask, k_aux=min(k_aux, int(aux_mask.sum())))
    got = cpu.encode_topk(x, W_enc, b_enc, k, aux_mask=aux_mask, k_aux=k_aux)
    torch.testing.assert_close(got.values, expected.values)
    torch.testing.assert_close(got.aux_values.sort(1).values, expected.aux_values.sort(1).values)
    assert torch.equal(got.indices.sort(1).values, expected.indices.sort(1).values)
    assert torch.equal(got.aux_indices.sort(1).values, expected.aux_indices.sort(1).values)
    assert aux_mask[got.aux_indices].all()


def test_encode_topk_without_masked_latents_returns_no_auxk_selection():
    x, W_enc = torch.randn(4, 6), torch.randn(50, 6)
    got = cpu.encode_topk(x, W_enc, None, 3, aux_mask=torch.zeros(50, dtype=torch.bool), k_aux=5)
    assert got.aux_indices is None and torch.equal(got.values, reference.encode_topk(x, W_enc, None, 3).values)


@pytest.mark.parametrize("backend", ["cpu", "reference"])
def test_autograd_pieces_give_the_gradients_of_dense_torch(backend):
    ops = backend_for("cpu", backend)
    g = torch.Generator().manual_seed(0)
    batch, n, d, k = 6, 40, 11, 4
    x = torch.randn(batch, d, generator=g, requires_grad=True)
    W_enc = torch.randn(n, d, generator=g, requires_grad=True)
    b_enc = torch.randn(n, generator=g, requires_grad=True)
    W_dec = torch.randn(n, d, generator=g, requires_grad=True)
    target = torch.randn(batch, d, generator=g)

    selection = reference.encode_topk(x.detach(), W_enc.detach(), b_enc.detach(), k)
    values = selected_preactivations(x, W_enc, b_enc, selection.indices, selection.values, ops).relu()
    loss = (sparse_decode(selection.indices, values, W_dec, ops) - target).pow(2).sum()
    sparse_grads = torch.autograd.grad(loss, [x, W_enc, b_enc, W_dec])

    pre = x @ W_enc.T + b_enc
    mask = torch.zeros_like(pre).scatter_(1, selection.indices, 1.0)
    dense_loss = ((pre * mask).relu() @ W_dec - target).pow(2).sum()
    dense_grads = torch.autograd.grad(dense_loss, [x, W_enc, b_enc, W_dec])
    for sparse_grad, dense_grad in zip(sparse_grads, dense_grads):
        torch.testing.assert_close(sparse_grad, dense_grad, rtol=1e-5, atol=1e-4)


def test_an_unknown_backend_names_the_valid_ones():
    with pytest.raises(ValueError, match="reference, cpu, triton"):
        backend_for("cpu", "cuda-magic")


@pytest.mark.parametrize("n,k", [(64 * 128, 32), (32 * 40, 5), (1000, 3), (256, 1)])
def test_grouped_topk_equals_torch_topk(n, k):
    scores = torch.randn(17, n, generator=torch.Generator().manual_seed(n))
    values, indices = cpu.grouped_topk(scores, k)
    expected = scores.topk(k, dim=1)
    torch.testing.assert_close(values, expected.values, rtol=0, atol=0)
    assert torch.equal(indices, expected.indices)


def test_grouped_topk_with_ties_returns_the_top_values():
    scores = torch.zeros(3, 64 * 64)
    scores[:, ::7] = 1.0  # many equal maxima across groups
    values, indices = cpu.grouped_topk(scores, 8)
    assert torch.equal(values, torch.ones(3, 8)) and torch.equal(scores.gather(1, indices), values)
