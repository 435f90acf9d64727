"""Triton kernels of fused 2-D neighborhood attention (forward with log-sum-exp, recomputing backward).

Work decomposition. Dilation splits each axis into ``d`` interleaved groups; inside a group (``gh``,
``gw``) neighborhood attention is undilated on the ``L_gh x L_gw`` sub-map of in-group coordinates
``(t_r, t_c)`` (axis position ``g + d * t``). A program owns one (batch, head, dilation group, tile of
``TH x TW`` in-group positions) and walks only the *halo* of the tile: the in-group rows / columns that
its windows cover (forward, dQ), or the queries whose windows contain its keys (dK, dV). Blocks of the
halo are multiplied with ``tl.dot`` (tensor cores on GPUs) and masked with the exact window rule:

    window start  s(t) = min(max(t - k // 2, 0), L_g - k);   key t' is in the window iff s <= t' < s + k
    RPB entry     rpb[h, (k_h - 1) + t'_r - t_r, (k_w - 1) + t'_c - t_c]

Per-head parameters come from ``table`` (int32 ``[heads, 5]`` = k_h, k_w, d_h, d_w, bias offset or -1),
so Hydra head groups with different kernels and dilations share one launch; ``bias`` is all groups' RPB
tables flattened into one float32 vector. Softmax statistics and every accumulation are float32.
Nothing here uses atomics: every output element is written by exactly one program, and dRPB is summed
from per-program partial tables in a fixed order, so results are bitwise reproducible.

Layouts: q, k, v, out, dq, dk, dv ``[B, heads, H, W, D]`` with unit stride on D (other strides free);
lse and delta ``[B, heads, H, W]`` contiguous float32.
"""

from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"


def _configs(tiles):
    """Autotune configs from ``(TH, TW, KR, KC, num_warps, num_stages)``; one small config under the
    interpreter (its autotuner would run every config on the CPU)."""
    if INTERPRET:
        tiles = [(4, 8, 4, 8, 1, 1)]
    return [triton.Config({"TH": th, "TW": tw, "KR": kr, "KC": kc}, num_warps=w, num_stages=s)
            for th, tw, kr, kc, w, s in tiles]


# Query / key tiles of 64-128 positions (8x8 is the whole group of a StyleNAT layer: d = res / 8) and
# halo blocks of 32-128 keys: tl.dot needs >= 16 on every side; H100 wants 4-8 warps and 2-3 stages.
# At most 128 queries, so the float32 accumulator of a head_dim-128 tile fits 8 warps' registers.
_FORWARD_TILES = [(8, 8, 8, 8, 4, 2), (8, 8, 8, 8, 4, 3), (8, 8, 8, 8, 8, 2), (8, 16, 8, 8, 4, 2),
                  (16, 8, 8, 8, 8, 2), (8, 8, 4, 8, 4, 2), (8, 8, 8, 16, 4, 2)]
_BACKWARD_TILES = [(8, 8, 8, 8, 4, 2), (8, 8, 8, 8, 8, 2), (8, 16, 8, 8, 4, 2), (8, 8, 4, 8, 4, 2),
                   (16, 8, 8, 8, 8, 2)]
AUTOTUNE_KEY = ["heads", "H", "W", "BLOCK_D", "HAS_BIAS", "TF32"]


@triton.jit
def _program(table, heads, H, W, TH: tl.constexpr, TW: tl.constexpr):
    """This program's (batch x head) row ``bh``, batch ``b`` and head ``h`` (program axis 1), the head's
    parameters from ``table`` and its tile (program axis 0, see ``_tile_of_program``)."""
    bh = tl.program_id(1)
    b = bh // heads
    h = bh % heads
    kh, kw, dh, dw, bias_offset = _head_params(table, h)
    gh, gw, len_h, len_w, r0, c0, ok = _tile_of_program(tl.program_id(0), H, W, dh, dw, TH, TW)
    return bh, b, h, kh, kw, dh, dw, bias_offset, gh, gw, len_h, len_w, r0, c0, ok


@triton.jit
def _head_params(table, h):
    kh = tl.load(table + h * 5)
    kw = tl.load(table + h * 5 + 1)
    dh = tl.load(table + h * 5 + 2)
    dw = tl.load(table + h * 5 + 3)
    bias_offset = tl.load(table + h * 5 + 4)
    return kh, kw, dh, dw, bias_offset


@triton.jit
def _tile_of_program(pid, H, W, dh, dw, TH: tl.constexpr, TW: tl.constexpr):
    """Program id -> (group row, group col, group lengths, tile origin); ``ok`` False for spare programs."""
    tiles_h = ((H + dh - 1) // dh + TH - 1) // TH
    tiles_w = ((W + dw - 1) // dw + TW - 1) // TW
    per_group = tiles_h * tiles_w
    group = pid // per_group
    tile = pid % per_group
    gh = group // dw
    gw = group % dw
    len_h = (H - 1 - gh) // dh + 1
    len_w = (W - 1 - gw) // dw + 1
    r0 = (tile // tiles_w) * TH
    c0 = (tile % tiles_w) * TW
    ok = (group < dh * dw) & (r0 < len_h) & (c0 < len_w)
    return gh, gw, len_h, len_w, r0, c0, ok


@triton.jit
def _dot(a, b, TF32: tl.constexpr):
    """``a @ b`` accumulated in float32; float32 operands in IEEE precision unless ``TF32``."""
    if TF32:
        return tl.dot(a, b, input_precision="tf32")
    else:
        return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _window_start(t, length, kernel):
    return tl.minimum(tl.maximum(t - kernel // 2, 0), length - kernel)


@triton.jit
def _halo(first, last, length, kernel):
    """In-group keys covered by the windows of queries ``first..last``: ``[begin, end)``."""
    return _window_start(first, length, kernel), _window_start(last, length, kernel) + kernel


@triton.jit
def _inverse_halo(first, last, length, kernel):
    """In-group queries whose windows contain a key in ``first..last``: ``[begin, end)``."""
    begin = tl.where(first < kernel, 0, first - kernel // 2)
    end = tl.where(last >= length - kernel, length, last + kernel // 2 + 1)
    return begin, end


@triton.jit
def _tile_positions(r0, c0, len_h, len_w, TH: tl.constexpr, TW: tl.constexpr):
    """In-group row and column of the ``TH * TW`` positions of the tile at ``(r0, c0)`` (row-major, each
    ``[TH * TW]``) and whether each lies inside the group."""
    i = tl.arange(0, TH * TW)
    r = r0 + i // TW
    c = c0 + i % TW
    return r, c, (r < len_h) & (c < len_w)


@triton.jit
def _query_tile(r0, c0, len_h, len_w, kh, kw, D, TH: tl.constexpr, TW: tl.constexpr, BLOCK_D: tl.constexpr):
    """The ``TH x TW`` query tile at ``(r0, c0)``: its positions (``_tile_positions``), their window starts
    (``[TH * TW]`` each), the halo of keys their windows cover, ``[halo_r0, halo_r1) x [halo_c0, halo_c1)``,
    and the head-dim lanes ``offs_d`` (``[BLOCK_D]``) with ``d_ok`` (those < D)."""
    q_r, q_c, q_ok = _tile_positions(r0, c0, len_h, len_w, TH, TW)
    start_r = _window_start(q_r, len_h, kh)
    start_c = _window_start(q_c, len_w, kw)
    halo_r0, halo_r1 = _halo(r0, tl.minimum(r0 + TH, len_h) - 1, len_h, kh)
    halo_c0, halo_c1 = _halo(c0, tl.minimum(c0 + TW, len_w) - 1, len_w, kw)
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < D
    return q_r, q_c, q_ok, start_r, start_c, halo_r0, halo_r1, halo_c0, halo_c1, offs_d, d_ok


@triton.jit
def _positions(base, b, h, gh, gw, dh, dw, tr, tc, s_b, s_h, s_r, s_c):
    """Pointers to element 0 of the in-group positions ``(tr, tc)`` (broadcast together) of a
    ``[B, heads, H, W, D]`` tensor; 64-bit offsets."""
    start = base + tl.cast(b, tl.int64) * s_b + tl.cast(h, tl.int64) * s_h
    return start + (gh + dh * tr).to(tl.int64) * s_r + (gw + dw * tc).to(tl.int64) * s_c


@triton.jit
def _rows_ptr(base, b, h, gh, gw, dh, dw, tr, tc, s_b, s_h, s_r, s_c, offs_d):
    """``[n, BLOCK_D]`` pointers of the ``n`` in-group positions ``(tr, tc)``."""
    return _positions(base, b, h, gh, gw, dh, dw, tr, tc, s_b, s_h, s_r, s_c)[:, None] + offs_d[None, :]


@triton.jit
def _key_rows(K, V, b, h, gh, gw, dh, dw, k_r, k_c, k_ok, sk_b, sk_h, sk_r, sk_c, sv_b, sv_h, sv_r, sv_c, offs_d, d_ok):
    """k and v (``[n, BLOCK_D]`` each, 0 where ``k_ok`` or ``d_ok`` is False) of the ``n`` in-group keys
    ``(k_r, k_c)``."""
    mask = k_ok[:, None] & d_ok[None, :]
    k = tl.load(_rows_ptr(K, b, h, gh, gw, dh, dw, k_r, k_c, sk_b, sk_h, sk_r, sk_c, offs_d), mask=mask, other=0.0)
    v = tl.load(_rows_ptr(V, b, h, gh, gw, dh, dw, k_r, k_c, sv_b, sv_h, sv_r, sv_c, offs_d), mask=mask, other=0.0)
    return k, v


@triton.jit
def _query_rows(Q, dOut, Lse, Delta, bh, b, h, gh, gw, dh, dw, q_r, q_c, q_ok, H, W,
                sq_b, sq_h, sq_r, sq_c, so_b, so_h, so_r, so_c, offs_d, d_ok):
    """What the backward reads of the ``n`` in-group queries ``(q_r, q_c)`` of the (batch x head) row ``bh``:
    q and dO (``[n, BLOCK_D]``), lse and delta (``[n]``); 0 where ``q_ok`` or ``d_ok`` is False."""
    mask = q_ok[:, None] & d_ok[None, :]
    q = tl.load(_rows_ptr(Q, b, h, gh, gw, dh, dw, q_r, q_c, sq_b, sq_h, sq_r, sq_c, offs_d), mask=mask, other=0.0)
    do = tl.load(_rows_ptr(dOut, b, h, gh, gw, dh, dw, q_r, q_c, so_b, so_h, so_r, so_c, offs_d), mask=mask,
                 other=0.0)
    position = bh.to(tl.int64) * H * W + (gh + dh * q_r) * W + gw + dw * q_c  # in [B, heads, H, W]
    lse = tl.load(Lse + position, mask=q_ok, other=0.0)
    delta = tl.load(Delta + position, mask=q_ok, other=0.0)
    return q, do, lse, delta


@triton.jit
def _scores(q, k, scale, bias, bias_offset, q_r, q_c, k_r, k_c, start_r, start_c, kh, kw, q_ok, k_ok,
            HAS_BIAS: tl.constexpr, TF32: tl.constexpr):
    """Scaled logits ``[M, N]`` of queries ``q`` (``[M, D]``) vs keys ``k`` (``[N, D]``), plus the RPB, and
    the mask of (query, key) pairs inside the query's window."""
    s = _dot(q, tl.trans(k), TF32) * scale
    in_window = ((k_r[None, :] >= start_r[:, None]) & (k_r[None, :] < start_r[:, None] + kh)
                 & (k_c[None, :] >= start_c[:, None]) & (k_c[None, :] < start_c[:, None] + kw)
                 & q_ok[:, None] & k_ok[None, :])
    if HAS_BIAS:
        index = (kh - 1 + k_r[None, :] - q_r[:, None]) * (2 * kw - 1) + (kw - 1 + k_c[None, :] - q_c[:, None])
        s += tl.load(bias + bias_offset + index, mask=in_window & (bias_offset >= 0), other=0.0)
    return s, in_window


@triton.jit
def _halo_block(q, q_r, q_c, q_ok, start_r, start_c, kh, kw, bias, bias_offset, scale,
                K, V, b, h, gh, gw, dh, dw, kr0, kc0, halo_r1, halo_c1, offs_d, d_ok,
                sk_b, sk_h, sk_r, sk_c, sv_b, sv_h, sv_r, sv_c,
                HAS_BIAS: tl.constexpr, TF32: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr):
    """k and v of the ``KR x KC`` block of the halo at ``(kr0, kc0)`` (clipped to the halo's ends) and the
    scores of the query tile against it with their window mask (``_scores``)."""
    k_r, k_c, k_ok = _tile_positions(kr0, kc0, halo_r1, halo_c1, KR, KC)
    k, v = _key_rows(K, V, b, h, gh, gw, dh, dw, k_r, k_c, k_ok, sk_b, sk_h, sk_r, sk_c, sv_b, sv_h, sv_r, sv_c,
                     offs_d, d_ok)
    s, in_window = _scores(q, k, scale, bias, bias_offset, q_r, q_c, k_r, k_c, start_r, start_c, kh, kw, q_ok, k_ok,
                           HAS_BIAS, TF32)
    return k, v, s, in_window


@triton.autotune(configs=_configs(_FORWARD_TILES), key=AUTOTUNE_KEY)
@triton.jit
def na2d_forward_kernel(
    Q, K, V, Out, Lse, bias, table,
    sq_b, sq_h, sq_r, sq_c, sk_b, sk_h, sk_r, sk_c, sv_b, sv_h, sv_r, sv_c, so_b, so_h, so_r, so_c,
    heads, H, W, D, scale,
    BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, TF32: tl.constexpr,
    TH: tl.constexpr, TW: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr,
):
    """One program: a ``TH x TW`` query tile; online softmax over its halo; writes out and lse."""
    bh, b, h, kh, kw, dh, dw, bias_offset, gh, gw, len_h, len_w, r0, c0, ok = _program(table, heads, H, W, TH, TW)
    if ok:
        q_r, q_c, q_ok, start_r, start_c, halo_r0, halo_r1, halo_c0, halo_c1, offs_d, d_ok = _query_tile(
            r0, c0, len_h, len_w, kh, kw, D, TH, TW, BLOCK_D)
        q = tl.load(_rows_ptr(Q, b, h, gh, gw, dh, dw, q_r, q_c, sq_b, sq_h, sq_r, sq_c, offs_d),
                    mask=q_ok[:, None] & d_ok[None, :], other=0.0)

        row_max = tl.full([TH * TW], float("-inf"), tl.float32)
        row_sum = tl.zeros([TH * TW], tl.float32)
        acc = tl.zeros([TH * TW, BLOCK_D], tl.float32)
        for kr0 in range(halo_r0, halo_r1, KR):
            for kc0 in range(halo_c0, halo_c1, KC):
                k, v, s, in_window = _halo_block(q, q_r, q_c, q_ok, start_r, start_c, kh, kw, bias, bias_offset, scale,
                                                 K, V, b, h, gh, gw, dh, dw, kr0, kc0, halo_r1, halo_c1, offs_d, d_ok,
                                                 sk_b, sk_h, sk_r, sk_c, sv_b, sv_h, sv_r, sv_c, HAS_BIAS, TF32, KR, KC)
                s = tl.where(in_window, s, float("-inf"))
                new_max = tl.maximum(row_max, tl.max(s, 1))
                shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # no -inf - -inf before a key
                alpha = tl.exp(row_max - shift)
                p = tl.exp(s - shift[:, None])
                row_sum = row_sum * alpha + tl.sum(p, 1)
                acc = acc * alpha[:, None] + _dot(p.to(v.dtype), v, TF32)
                row_max = new_max
        out = acc / row_sum[:, None]
        lse = tl.where(row_max == float("-inf"), 0.0, row_max) + tl.log(row_sum)
        tl.store(_rows_ptr(Out, b, h, gh, gw, dh, dw, q_r, q_c, so_b, so_h, so_r, so_c, offs_d),
                 out.to(Out.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])
        position = (gh + dh * q_r) * W + gw + dw * q_c
        tl.store(Lse + bh.to(tl.int64) * H * W + position, lse, mask=q_ok)


@triton.autotune(configs=_configs(_BACKWARD_TILES), key=AUTOTUNE_KEY)
@triton.jit
def na2d_backward_dq_kernel(
    Q, K, V, dOut, Lse, Delta, dQ, bias, table,
    sq_b, sq_h, sq_r, sq_c, sk_b, sk_h, sk_r, sk_c, sv_b, sv_h, sv_r, sv_c, so_b, so_h, so_r, so_c,
    heads, H, W, D, scale,
    BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, TF32: tl.constexpr,
    TH: tl.constexpr, TW: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr,
):
    """One program: dQ of a ``TH x TW`` query tile, recomputing the weights over its halo from the lse.
    ``dOut`` and ``dQ`` share the strides ``so_*``."""
    bh, b, h, kh, kw, dh, dw, bias_offset, gh, gw, len_h, len_w, r0, c0, ok = _program(table, heads, H, W, TH, TW)
    if ok:
        q_r, q_c, q_ok, start_r, start_c, halo_r0, halo_r1, halo_c0, halo_c1, offs_d, d_ok = _query_tile(
            r0, c0, len_h, len_w, kh, kw, D, TH, TW, BLOCK_D)
        dq = tl.zeros([TH * TW, BLOCK_D], tl.float32)
        q, do, lse, delta = _query_rows(Q, dOut, Lse, Delta, bh, b, h, gh, gw, dh, dw, q_r, q_c, q_ok, H, W,
                                        sq_b, sq_h, sq_r, sq_c, so_b, so_h, so_r, so_c, offs_d, d_ok)
        for kr0 in range(halo_r0, halo_r1, KR):
            for kc0 in range(halo_c0, halo_c1, KC):
                k, v, s, in_window = _halo_block(q, q_r, q_c, q_ok, start_r, start_c, kh, kw, bias, bias_offset, scale,
                                                 K, V, b, h, gh, gw, dh, dw, kr0, kc0, halo_r1, halo_c1, offs_d, d_ok,
                                                 sk_b, sk_h, sk_r, sk_c, sv_b, sv_h, sv_r, sv_c, HAS_BIAS, TF32, KR, KC)
                p = tl.where(in_window, tl.exp(s - lse[:, None]), 0.0)
                dp = _dot(do, tl.trans(v), TF32)
                ds = p * (dp - delta[:, None])
                dq += _dot(ds.to(k.dtype), k, TF32)
        tl.store(_rows_ptr(dQ, b, h, gh, gw, dh, dw, q_r, q_c, so_b, so_h, so_r, so_c, offs_d),
                 (dq * scale).to(dQ.dtype.element_ty), mask=q_ok[:, None] & d_ok[None, :])


@triton.autotune(configs=_configs(_BACKWARD_TILES), key=AUTOTUNE_KEY)
@triton.jit
def na2d_backward_dkv_kernel(
    Q, K, V, dOut, Lse, Delta, dK, dV, bias, table,
    sq_b, sq_h, sq_r, sq_c, sk_b, sk_h, sk_r, sk_c, sv_b, sv_h, sv_r, sv_c, so_b, so_h, so_r, so_c,
    heads, H, W, D, scale,
    BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, TF32: tl.constexpr,
    TH: tl.constexpr, TW: tl.constexpr, KR: tl.constexpr, KC: tl.constexpr,
):
    """One program: dK and dV of a ``TH x TW`` key tile over its inverse neighborhood (the queries whose
    windows contain one of its keys), in ``KR x KC`` query blocks. ``dOut``, ``dK``, ``dV`` share ``so_*``."""
    bh, b, h, kh, kw, dh, dw, bias_offset, gh, gw, len_h, len_w, r0, c0, ok = _program(table, heads, H, W, TH, TW)
    if ok:
        k_r, k_c, k_ok = _tile_positions(r0, c0, len_h, len_w, TH, TW)
        offs_d = tl.arange(0, BLOCK_D)
        d_ok = offs_d < D
        k, v = _key_rows(K, V, b, h, gh, gw, dh, dw, k_r, k_c, k_ok, sk_b, sk_h, sk_r, sk_c, sv_b, sv_h, sv_r, sv_c,
                         offs_d, d_ok)
        inv_r0, inv_r1 = _inverse_halo(r0, tl.minimum(r0 + TH, len_h) - 1, len_h, kh)
        inv_c0, inv_c1 = _inverse_halo(c0, tl.minimum(c0 + TW, len_w) - 1, len_w, kw)

        dk = tl.zeros([TH * TW, BLOCK_D], tl.float32)
        dv = tl.zeros([TH * TW, BLOCK_D], tl.float32)
        for qr0 in range(inv_r0, inv_r1, KR):
            for qc0 in range(inv_c0, inv_c1, KC):
                q_r, q_c, q_ok = _tile_positions(qr0, qc0, inv_r1, inv_c1, KR, KC)
                q, do, lse, delta = _query_rows(Q, dOut, Lse, Delta, bh, b, h, gh, gw, dh, dw, q_r, q_c, q_ok, H, W,
                                                sq_b, sq_h, sq_r, sq_c, so_b, so_h, so_r, so_c, offs_d, d_ok)
                start_r = _window_start(q_r, len_h, kh)
                start_c = _window_start(q_c, len_w, kw)
                s, in_window = _scores(q, k, scale, bias, bias_offset, q_r, q_c, k_r, k_c,
                                       start_r, start_c, kh, kw, q_ok, k_ok, HAS_BIAS, TF32)
                p = tl.where(in_window, tl.exp(s - lse[:, None]), 0.0)  # [queries, keys]
                dv += _dot(tl.trans(p).to(do.dtype), do, TF32)
                dp = _dot(do, tl.trans(v), TF32)
                ds = p * (dp - delta[:, None])
                dk += _dot(tl.trans(ds).to(q.dtype), q, TF32)
        k_mask = k_ok[:, None] & d_ok[None, :]
        tl.store(_rows_ptr(dK, b, h, gh, gw, dh, dw, k_r, k_c, so_b, so_h, so_r, so_c, offs_d),
                 (dk * scale).to(dK.dtype.element_ty), mask=k_mask)
        tl.store(_rows_ptr(dV, b, h, gh, gw, dh, dw, k_r, k_c, so_b, so_h, so_r, so_c, offs_d),
                 dv.to(dV.dtype.element_ty), mask=k_mask)


@triton.jit
def _grid_ptr(base, b, h, gh, gw, dh, dw, tr, tc, s_b, s_h, s_r, s_c, offs_d):
    """``[TH, TW, BLOCK_D]`` pointers of the in-group positions ``(tr, tc)``, ``[TH, 1]`` x ``[1, TW]``."""
    return _positions(base, b, h, gh, gw, dh, dw, tr, tc, s_b, s_h, s_r, s_c)[:, :, None] + offs_d[None, None, :]


@triton.jit
def na2d_backward_rpb_kernel(
    Q, K, V, dOut, Lse, Delta, partial, bias, table,
    sq_b, sq_h, sq_r, sq_c, sk_b, sk_h, sk_r, sk_c, sv_b, sv_h, sv_r, sv_c, so_b, so_h, so_r, so_c,
    B, heads, H, W, D, scale,
    BLOCK_D: tl.constexpr, ROWS: tl.constexpr, COLS: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr,
):
    """One program: the RPB gradient of a ``TH x TW`` query tile of one head, over the whole batch, into
    its own ``[ROWS, COLS]`` slice of ``partial[heads, programs, ROWS, COLS]`` (2k-1 bins, padded).

    Slot by slot (``u_r``, ``u_c``): each query's key in that slot is gathered, its weight gradient
    ``ds = p * (dO.v - delta)`` recomputed, and the ``[TH, TW]`` values are binned by their row offset
    (``k_h - 1 + s_r + u_r - t_r``, one per query row) and column offset (one per query column) with two
    one-hot reductions: no two threads ever add into one address."""
    pid = tl.program_id(0)
    h = tl.program_id(1)
    kh, kw, dh, dw, bias_offset = _head_params(table, h)
    gh, gw, len_h, len_w, r0, c0, ok = _tile_of_program(pid, H, W, dh, dw, TH, TW)
    if ok & (bias_offset >= 0):
        q_r = r0 + tl.arange(0, TH)
        q_c = c0 + tl.arange(0, TW)
        q_ok = (q_r < len_h)[:, None] & (q_c < len_w)[None, :]  # [TH, TW]
        start_r = _window_start(q_r, len_h, kh)
        start_c = _window_start(q_c, len_w, kw)
        offs_d = tl.arange(0, BLOCK_D)
        q_mask = q_ok[:, :, None] & (offs_d < D)[None, None, :]
        bins_r = tl.arange(0, ROWS)
        bins_c = tl.arange(0, COLS)
        table_acc = tl.zeros([ROWS, COLS], tl.float32)
        for b in range(B):
            q = tl.load(_grid_ptr(Q, b, h, gh, gw, dh, dw, q_r[:, None], q_c[None, :], sq_b, sq_h, sq_r, sq_c,
                                  offs_d), mask=q_mask, other=0.0).to(tl.float32)
            do = tl.load(_grid_ptr(dOut, b, h, gh, gw, dh, dw, q_r[:, None], q_c[None, :], so_b, so_h, so_r, so_c,
                                   offs_d), mask=q_mask, other=0.0).to(tl.float32)
            position = (tl.cast(b * heads + h, tl.int64) * H * W + ((gh + dh * q_r) * W)[:, None]
                        + (gw + dw * q_c)[None, :])
            lse = tl.load(Lse + position, mask=q_ok, other=0.0)
            delta = tl.load(Delta + position, mask=q_ok, other=0.0)
            for u_r in range(0, kh):
                k_r = start_r + u_r
                bin_r = kh - 1 + k_r - q_r  # [TH]
                for u_c in range(0, kw):
                    k_c = start_c + u_c
                    bin_c = kw - 1 + k_c - q_c  # [TW]
                    k = tl.load(_grid_ptr(K, b, h, gh, gw, dh, dw, k_r[:, None], k_c[None, :], sk_b, sk_h, sk_r, sk_c,
                                          offs_d), mask=q_mask, other=0.0).to(tl.float32)
                    v = tl.load(_grid_ptr(V, b, h, gh, gw, dh, dw, k_r[:, None], k_c[None, :], sv_b, sv_h, sv_r, sv_c,
                                          offs_d), mask=q_mask, other=0.0).to(tl.float32)
                    rpb = tl.load(bias + bias_offset + bin_r[:, None] * (2 * kw - 1) + bin_c[None, :],
                                  mask=q_ok, other=0.0)
                    p = tl.where(q_ok, tl.exp(tl.sum(q * k, 2) * scale + rpb - lse), 0.0)
                    ds = p * (tl.sum(do * v, 2) - delta)  # [TH, TW]
                    by_row = tl.sum(tl.where(bin_r[:, None, None] == bins_r[None, :, None], ds[:, None, :], 0.0), 0)
                    table_acc += tl.sum(tl.where(bin_c[None, :, None] == bins_c[None, None, :], by_row[:, :, None],
                                                 0.0), 1)
        out = partial + tl.cast(h * tl.num_programs(0) + pid, tl.int64) * ROWS * COLS
        tl.store(out + bins_r[:, None] * COLS + bins_c[None, :], table_acc)
