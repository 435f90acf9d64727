"""The reference backend against the spec, written a second, independent way (dense masked attention)."""

import itertools

import pytest
import torch

import natten_ops
from natten_ops import reference


def clamped_centre_mask(length: int, kernel: int, dilation: int) -> torch.Tensor:
    """``[L, L]`` bool: query x attends key y (the spec's "clamped centre" form, independent of reference.py).

    Same dilation group, and the in-group key coordinate a satisfies |a - clamp(t, r, L_g - 1 - r)| <= r.
    """
    r = kernel // 2
    mask = torch.zeros(length, length, dtype=torch.bool)
    for x, y in itertools.product(range(length), repeat=2):
        if x % dilation != y % dilation:
            continue
        group = x % dilation
        group_length = len(range(group, length, dilation))
        t, a = x // dilation, y // dilation
        centre = min(max(t, r), group_length - 1 - r)
        mask[x, y] = abs(a - centre) <= r
    return mask


def dense_na2d(q, k, v, kernel, dilation, rpb, scale):
    """Full attention over all H*W tokens with a boolean neighborhood mask and an explicit RPB lookup."""
    B, heads, H, W, D = q.shape
    rows = clamped_centre_mask(H, kernel[0], dilation[0])
    cols = clamped_centre_mask(W, kernel[1], dilation[1])
    mask = (rows[:, None, :, None] & cols[None, :, None, :]).reshape(H * W, H * W)
    logits = torch.einsum("bhqd,bhkd->bhqk", q.reshape(B, heads, H * W, D), k.reshape(B, heads, H * W, D)) * scale
    if rpb is not None:
        i = torch.arange(H).repeat_interleave(W)
        j = torch.arange(W).repeat(H)
        p_row = (kernel[0] - 1) + torch.div(i[None, :] - i[:, None], dilation[0], rounding_mode="floor")
        p_col = (kernel[1] - 1) + torch.div(j[None, :] - j[:, None], dilation[1], rounding_mode="floor")
        bias = rpb[:, p_row.clamp(0, 2 * kernel[0] - 2), p_col.clamp(0, 2 * kernel[1] - 2)]
        logits = logits + bias
    logits = logits.masked_fill(~mask, float("-inf"))
    out = torch.softmax(logits, -1) @ v.reshape(B, heads, H * W, D)
    return out.reshape(B, heads, H, W, D)


CASES = [  # (H, W, kernel, dilation)
    (7, 7, (3, 3), (1, 1)),
    (14, 14, (7, 7), (2, 2)),
    (7, 9, (3, 3), (2, 3)),
    (9, 13, (3, 5), (3, 2)),  # L = k*d exactly and L = k*d + d - 1
    (12, 11, (5, 3), (2, 3)),
]


@pytest.mark.parametrize("H, W, kernel, dilation", CASES)
@pytest.mark.parametrize("with_rpb", [False, True])
def test_reference_matches_dense_masked_attention(H, W, kernel, dilation, with_rpb):
    gen = torch.Generator().manual_seed(H * 100 + W)
    q, k, v = (torch.randn(2, 3, H, W, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    rpb = torch.randn(3, 2 * kernel[0] - 1, 2 * kernel[1] - 1, generator=gen, dtype=torch.float64) if with_rpb else None
    ours = natten_ops.na2d(q, k, v, kernel, dilation, rpb=rpb, backend="reference")
    dense = dense_na2d(q, k, v, kernel, dilation, rpb, scale=8 ** -0.5)
    torch.testing.assert_close(ours, dense, rtol=0, atol=1e-12)


@pytest.mark.parametrize("length, kernel, dilation", [(7, 3, 1), (10, 3, 2), (13, 5, 2), (21, 7, 3), (16, 7, 2)])
def test_every_query_sees_k_keys_and_differs_from_sasa(length, kernel, dilation):
    keys, bias_index = natten_ops.window_indices(length, kernel, dilation)
    assert keys.shape == (length, kernel)
    assert all(len(set(row.tolist())) == kernel for row in keys)  # k distinct keys, also at the borders
    assert ((keys - torch.arange(length)[:, None]) % dilation == 0).all()  # same dilation group
    assert bias_index.min() >= 0 and bias_index.max() <= 2 * kernel - 2
    # The same-padded (SASA) window |key - query| <= r*d is not NA: border queries see fewer keys.
    r = kernel // 2
    sasa = [[y for y in range(length) if abs(y - x) <= r * dilation and (y - x) % dilation == 0] for x in range(length)]
    assert len(sasa[0]) < kernel
    assert sorted(keys[0].tolist()) != sasa[0]
    assert (clamped_centre_mask(length, kernel, dilation).sum(1) == kernel).all()


@pytest.mark.parametrize("length, kernel, dilation", [(7, 3, 1), (10, 3, 2), (13, 5, 2), (21, 7, 3), (15, 3, 5),
                                                      (27, 7, 2), (14, 7, 2), (40, 13, 3)])
def test_header_index_math_matches_enumeration(length, kernel, dilation):
    """na2d_index.h (via the CPU extension): window start and inverse neighborhood, by enumeration."""
    ext = pytest.importorskip("natten_ops._build").load_cpu()
    tables = ext.axis_tables(length, kernel, dilation)
    keys, _ = natten_ops.window_indices(length, kernel, dilation)
    assert tables[:, 0].tolist() == keys[:, 0].tolist()
    for key in range(length):
        queries = [x for x in range(length) if key in keys[x].tolist()]
        first, end = tables[key, 1].item(), tables[key, 2].item()
        assert list(range(first, end, dilation)) == queries, f"inverse neighborhood of key {key}"
        assert len(queries) < 2 * kernel  # the bound the CPU backward's buffers rely on
