"""The Triton kernels equal the dense reference: the three sparse ops, the fused encoder + TopK, autograd.

Without a GPU the kernels run under TRITON_INTERPRET=1 (the `triton_ops` fixture), so sizes stay tiny;
on a GPU the same tests run compiled, and a few more check what only a GPU can hold.
"""

import dataclasses

import pytest
import torch

from hfsae.ops import backend_for, reference, selected_preactivations, sparse_decode

cuda_only = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def random_code(batch, n_latents, d, k, seed, device, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    indices = torch.stack([torch.randperm(n_latents, generator=g)[:k] for _ in range(batch)])
    values = torch.randn(batch, k, generator=g)
    weight = torch.randn(n_latents, d, generator=g)
    dense = torch.randn(batch, d, generator=g)
    return [t.to(device) if t.dtype == torch.int64 else t.to(device, dtype) for t in (indices, values, weight, dense)]


def random_encoder(batch, n_latents, d, seed, device, dtype=torch.float32, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, d, generator=g).to(device, dtype)
    W_enc = (torch.randn(n_latents, d, generator=g) / d**0.5).to(device, dtype)
    b_enc = (0.1 * torch.randn(n_latents, generator=g)).to(device, dtype) if with_bias else None
    aux_mask = (torch.rand(n_latents, generator=g) < 0.3).to(device)
    return x, W_enc, b_enc, aux_mask


def assert_same_selection(values, indices, pre, expected_values, allowed=None, tolerance=1e-4):
    """values/indices [batch, k] are a top-k of pre [batch, n] (restricted to `allowed` [n]), up to ties.

    The values must equal the reference's sorted top-k, sit at their indices in pre, and the indices
    must be distinct (and allowed): together, the same set as the reference wherever no two
    candidates tie within the tolerance.
    """
    torch.testing.assert_close(values.float(), expected_values.float(), rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(pre.gather(1, indices).float(), values.float(), rtol=tolerance, atol=tolerance)
    for row in indices:
        assert row.unique().numel() == row.numel(), "a latent was selected twice in one row"
    if allowed is not None:
        assert allowed[indices].all(), "an aux latent outside aux_mask was selected"
    assert indices.dtype == torch.int64


# ---- the three sparse ops ---------------------------------------------------------------------

op_sizes = pytest.mark.parametrize(
    "batch,n_latents,d,k",
    [(1, 7, 3, 1), (9, 70, 13, 6), (5, 40, 1, 3), (33, 90, 600, 20), (2, 3, 513, 3)],
)


@op_sizes
def test_decode_equals_the_dense_product(triton_ops, device, batch, n_latents, d, k):
    indices, values, weight, _ = random_code(batch, n_latents, d, k, seed=1, device=device)
    expected = reference.decode(indices.cpu(), values.cpu().double(), weight.cpu().double())
    torch.testing.assert_close(triton_ops.decode(indices, values, weight).cpu().double(), expected, rtol=1e-5, atol=1e-4)


@op_sizes
def test_scatter_outer_equals_the_transposed_dense_product(triton_ops, device, batch, n_latents, d, k):
    indices, values, _, dense = random_code(batch, n_latents, d, k, seed=2, device=device)
    expected = reference.scatter_outer(indices.cpu(), values.cpu().double(), dense.cpu().double(), n_latents)
    got = triton_ops.scatter_outer(indices, values, dense, n_latents)
    torch.testing.assert_close(got.cpu().double(), expected, rtol=1e-5, atol=1e-4)


@op_sizes
def test_gather_dot_equals_the_dense_product_at_the_selected_entries(triton_ops, device, batch, n_latents, d, k):
    indices, _, weight, dense = random_code(batch, n_latents, d, k, seed=3, device=device)
    expected = reference.gather_dot(indices.cpu(), dense.cpu().double(), weight.cpu().double())
    torch.testing.assert_close(triton_ops.gather_dot(indices, dense, weight).cpu().double(), expected, rtol=1e-5, atol=1e-4)


def test_duplicate_latents_in_a_row_add_up_in_decode_and_scatter_outer(triton_ops, device):
    indices = torch.tensor([[3, 3, 1], [0, 3, 3]], device=device)
    values = torch.tensor([[1.0, 2.0, 0.5], [1.0, -1.0, 4.0]], device=device)
    weight = torch.randn(5, 4).to(device)
    dense = torch.randn(2, 4).to(device)
    torch.testing.assert_close(triton_ops.decode(indices, values, weight)[0], 3 * weight[3] + 0.5 * weight[1])
    torch.testing.assert_close(triton_ops.scatter_outer(indices, values, dense, 5)[3], 3 * dense[0] + 3 * dense[1])


def test_bf16_ops_accumulate_in_fp32_and_return_bf16(triton_ops, device):
    indices, values, weight, dense = random_code(17, 90, 200, 12, seed=4, device=device, dtype=torch.bfloat16)
    decoded = triton_ops.decode(indices, values, weight)
    gathered = triton_ops.gather_dot(indices, dense, weight)
    scattered = triton_ops.scatter_outer(indices, values, dense, 90)
    assert decoded.dtype == gathered.dtype == scattered.dtype == torch.bfloat16
    as_float = [t.cpu().float() if t.is_floating_point() else t.cpu() for t in (indices, values, weight, dense)]
    bf16 = dict(rtol=1.6e-2, atol=1e-2)  # one bf16 rounding of the fp32 sums
    torch.testing.assert_close(decoded.cpu().float(), reference.decode(*as_float[:3]), **bf16)
    torch.testing.assert_close(gathered.cpu().float(), reference.gather_dot(as_float[0], as_float[3], as_float[2]), **bf16)
    torch.testing.assert_close(
        scattered.cpu().float(), reference.scatter_outer(as_float[0], as_float[1], as_float[3], 90), **bf16
    )


def test_ops_accept_the_column_slices_the_model_passes(triton_ops, device):
    indices, values, weight, dense = random_code(6, 50, 10, 8, seed=5, device=device)
    first_four = indices[:, :4], values[:, :4]  # non-contiguous views, as TopKSAE.forward slices them
    expected = reference.decode(first_four[0].contiguous(), first_four[1].contiguous(), weight)
    torch.testing.assert_close(triton_ops.decode(*first_four, weight), expected)


@cuda_only
def test_scatter_outer_is_deterministic_with_many_entries_per_latent(triton_ops, device):
    indices = torch.randint(0, 8, (4096, 32), device=device)  # ~16k entries per latent
    values = torch.randn(4096, 32, device=device)
    dense = torch.randn(4096, 96, device=device)
    first = triton_ops.scatter_outer(indices, values, dense, 8)
    assert torch.equal(first, triton_ops.scatter_outer(indices, values, dense, 8))


# ---- the fused encoder + TopK -----------------------------------------------------------------

encoder_sizes = pytest.mark.parametrize(
    "batch,n_latents,d,k,k_aux",
    [
        (1, 7, 3, 1, 2),  # batch 1, k 1, fewer latents than one tile
        (13, 301, 29, 5, 17),  # n and d not tile multiples, several splits
        (40, 700, 16, 32, 24),  # k as large as a tile: the buffers fill and shrink many times
        (17, 257, 48, 2, 1),  # one latent past a tile boundary
    ],
)


@encoder_sizes
@pytest.mark.parametrize("with_bias", [True, False])
def test_fused_encode_topk_selects_the_reference_sets(triton_ops, device, batch, n_latents, d, k, k_aux, with_bias):
    x, W_enc, b_enc, _ = random_encoder(batch, n_latents, d, seed=n_latents, device=device, with_bias=with_bias)
    got = triton_ops.encode_topk(x, W_enc, b_enc, k)
    pre = (x.double() @ W_enc.double().T + (0 if b_enc is None else b_enc.double())).cpu()
    assert got.aux_values is None and got.aux_indices is None
    assert got.values.dtype == torch.float32
    assert_same_selection(got.values.cpu(), got.indices.cpu(), pre, pre.topk(k).values)


@encoder_sizes
def test_fused_encode_topk_selects_the_top_aux_latents_among_the_masked(triton_ops, device, batch, n_latents, d, k, k_aux):
    x, W_enc, b_enc, aux_mask = random_encoder(batch, n_latents, d, seed=n_latents + 1, device=device)
    k_aux = min(k_aux, int(aux_mask.sum()))
    got = triton_ops.encode_topk(x, W_enc, b_enc, k, aux_mask=aux_mask, k_aux=k_aux)
    expected = reference.encode_topk(x.cpu().double(), W_enc.cpu().double(), b_enc.cpu().double(), k, aux_mask.cpu(), k_aux)
    pre = (x.double() @ W_enc.double().T + b_enc.double()).cpu()
    assert_same_selection(got.values.cpu(), got.indices.cpu(), pre, expected.values)
    assert_same_selection(got.aux_values.cpu(), got.aux_indices.cpu(), pre, expected.aux_values, allowed=aux_mask.cpu())


def test_k_aux_is_capped_at_the_number_of_masked_latents(triton_ops, device):
    x, W_enc, b_enc, _ = random_encoder(4, 60, 8, seed=7, device=device)
    aux_mask = torch.zeros(60, dtype=torch.bool, device=device)
    aux_mask[[5, 17, 42]] = True
    got = triton_ops.encode_topk(x, W_enc, b_enc, 3, aux_mask=aux_mask, k_aux=10)
    assert got.aux_indices.shape == (4, 3)
    assert torch.equal(got.aux_indices.sort(1).values.cpu(), torch.tensor([[5, 17, 42]] * 4))


def test_bf16_encode_topk_selects_on_the_fp32_sums_and_returns_bf16(triton_ops, device):
    x, W_enc, b_enc, _ = random_encoder(20, 300, 40, seed=8, device=device, dtype=torch.bfloat16)
    got = triton_ops.encode_topk(x, W_enc, b_enc, 8)
    pre = (x.double() @ W_enc.double().T + b_enc.double()).cpu()  # exact products of the bf16 inputs
    assert got.values.dtype == torch.bfloat16
    assert_same_selection(got.values.cpu(), got.indices.cpu(), pre, pre.topk(8).values.bfloat16(), tolerance=1e-2)


def test_the_bitonic_topk_path_shrinks_buffers_like_the_ranking_path(triton_ops, device, monkeypatch):
    # The interpreter ranks by counting (see _top_keys); the GPU uses tl.topk. Run tl.topk here too,
    # on a size whose buffers must shrink (7 tiles of 32 into a 128-slot buffer).
    tiles = dataclasses.replace(triton_ops.INTERPRETER_ENCODE_TILES, select_by_rank=False)
    monkeypatch.setattr(triton_ops, "INTERPRETER_ENCODE_TILES", tiles)
    x, W_enc, b_enc, _ = random_encoder(3, 210, 8, seed=9, device=device)
    got = triton_ops.encode_topk(x, W_enc, b_enc, 2)
    pre = (x.double() @ W_enc.double().T + b_enc.double()).cpu()
    assert_same_selection(got.values.cpu(), got.indices.cpu(), pre, pre.topk(2).values)


def test_equal_preactivations_still_give_k_distinct_latents(triton_ops, device):
    x = torch.ones(3, 16, device=device)
    W_enc = torch.ones(150, 16, device=device)  # every latent ties: every tile beats the threshold
    got = triton_ops.encode_topk(x, W_enc, None, 4)
    assert torch.equal(got.values.cpu(), torch.full((3, 4), 16.0))
    for row in got.indices.cpu():
        assert row.unique().numel() == 4


def test_k_above_the_number_of_latents_names_the_valid_range(triton_ops, device):
    x, W_enc, b_enc, _ = random_encoder(2, 10, 4, seed=10, device=device)
    with pytest.raises(ValueError, match=r"k must be in 1\.\.10 .*got k=11"):
        triton_ops.encode_topk(x, W_enc, b_enc, 11)


def test_mixed_dtypes_are_refused_with_both_named(triton_ops, device):
    x, W_enc, b_enc, _ = random_encoder(2, 10, 4, seed=11, device=device)
    with pytest.raises(ValueError, match="torch.bfloat16 and torch.float32"):
        triton_ops.encode_topk(x.bfloat16(), W_enc, b_enc, 3)


@cuda_only
@pytest.mark.slow
def test_fused_encode_topk_addresses_weights_past_two_to_the_31_elements(triton_ops, device):
    n_latents, d, k = 1_100_000, 2048, 16  # n · d ≈ 2.25e9 > 2^31
    g = torch.Generator(device=device).manual_seed(12)
    W_enc = torch.randn(n_latents, d, generator=g, device=device, dtype=torch.bfloat16)
    x = torch.randn(8, d, generator=g, device=device, dtype=torch.bfloat16)
    got = triton_ops.encode_topk(x, W_enc, None, k)
    pre = torch.cat([x.float() @ chunk.float().T for chunk in W_enc.split(1 << 18)], dim=1)
    assert_same_selection(got.values.float().cpu(), got.indices.cpu(), pre.cpu(), pre.topk(k).values.cpu(), tolerance=2e-2)
    assert int(got.indices.max()) > 2**31 // d  # the winners span the whole weight matrix


# ---- the autograd pieces on the Triton backend ------------------------------------------------


def test_sparse_decode_and_selected_preactivations_give_the_reference_backends_gradients(triton_ops, device):
    triton_backend = backend_for(device, "triton")
    assert triton_backend is triton_ops
    g = torch.Generator().manual_seed(13)
    batch, n, d, k = 6, 45, 11, 4
    leaves = [torch.randn(*shape, generator=g) for shape in [(batch, d), (n, d), (n,), (n, d)]]
    target = torch.randn(batch, d, generator=g)

    def loss_and_grads(ops, on):
        x, W_enc, b_enc, W_dec = [t.to(on).requires_grad_() for t in leaves]
        selection = ops.encode_topk(x.detach(), W_enc.detach(), b_enc.detach(), k)
        values = selected_preactivations(x, W_enc, b_enc, selection.indices, selection.values, ops).relu()
        loss = (sparse_decode(selection.indices, values, W_dec, ops) - target.to(on)).pow(2).sum()
        grads = torch.autograd.grad(loss, [x, W_enc, b_enc, W_dec])
        return [loss.detach().cpu()] + [grad.cpu() for grad in grads]

    got = loss_and_grads(triton_backend, device)
    expected = loss_and_grads(backend_for("cpu", "reference"), "cpu")
    for got_tensor, expected_tensor in zip(got, expected):
        torch.testing.assert_close(got_tensor, expected_tensor, rtol=1e-4, atol=1e-4)


# ---- the encoder path and mixed precision -----------------------------------------------------


@pytest.mark.parametrize("path", ["fused", "dense_topk"])
def test_both_encoder_paths_select_the_reference_sets(triton_ops, device, path, monkeypatch):
    from hfsae.ops import autotune

    monkeypatch.setenv("HFSAE_ENCODER_PATH", path)
    x, W_enc, b_enc, aux_mask = random_encoder(13, 301, 29, seed=14, device=device)
    got = triton_ops.encode_topk(x, W_enc, b_enc, 5, aux_mask=aux_mask, k_aux=17)
    expected = reference.encode_topk(x.cpu().double(), W_enc.cpu().double(), b_enc.cpu().double(), 5, aux_mask.cpu(), 17)
    pre = (x.double() @ W_enc.double().T + b_enc.double()).cpu()
    assert_same_selection(got.values.cpu(), got.indices.cpu(), pre, expected.values)
    assert_same_selection(got.aux_values.cpu(), got.aux_indices.cpu(), pre, expected.aux_values, allowed=aux_mask.cpu())
    assert triton_ops.encoder_path(x, W_enc, b_enc, 5) == path and autotune.env_var("encoder") == "HFSAE_ENCODER_PATH"


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_the_sae_step_on_triton_matches_fp32_with_fp32_master_weights_and_losses(triton_ops, device, dtype, monkeypatch):
    from hfsae import TopKSAE, TopKSAEConfig

    encoder_dtypes = []
    fused = triton_ops.encode_topk
    monkeypatch.setattr(triton_ops, "encode_topk", lambda x, *args, **kw: encoder_dtypes.append(x.dtype) or fused(x, *args, **kw))

    def step(ops_backend, autocast_dtype):
        torch.manual_seed(15)
        sae = TopKSAE(TopKSAEConfig(d_in=16, n_latents=96, k=4, k_aux=8)).to(device)
        sae.ops_backend = ops_backend
        x = torch.randn(24, 16, device=device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype != torch.float32):
            output = sae(x, dead_mask=torch.arange(96, device=device) % 4 == 0)
        output.loss.backward()
        return output, sae

    output, sae = step("triton", dtype)
    expected, expected_sae = step("reference", torch.float32)
    assert encoder_dtypes == [dtype]  # the encoder matmul ran in the autocast dtype
    assert output.loss.dtype == output.fvu.dtype == torch.float32
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in sae.parameters())
    # bf16 changes only which near-tied latents win: the losses agree to bf16's precision.
    tolerance = dict(rtol=1e-4, atol=1e-5) if dtype == torch.float32 else dict(rtol=3e-2, atol=3e-2)
    torch.testing.assert_close(output.loss.cpu(), expected.loss.cpu(), **tolerance)
    if dtype == torch.float32:
        torch.testing.assert_close(sae.W_dec.grad.cpu(), expected_sae.W_dec.grad.cpu(), rtol=1e-4, atol=1e-5)
