"""Triton kernels for CUDA tensors: Philox4x32-10 generated and applied in one pass.

Status: checked bit for bit against :mod:`dropkit.kernels.torch_ref` (and the NumPy reference)
with Triton's CPU interpreter (``TRITON_INTERPRET=1``, ``tests/test_triton.py``), which checks
logic and bits, not GPU code generation or speed; **not yet timed on a GPU**. The dispatcher
uses it by default for CUDA tensors when triton imports, after a once-per-device self-check
(``dropkit.kernels.uses_triton``); ``set_backend("torch")`` keeps the pure-PyTorch path.

What is fused (float32, float16, bfloat16; float64 applies a Triton keep field with
``torch_ref``'s expression, same bits):

* full-shape noise field (plain dropout, alpha dropout, every backward): ``_fused_kernel``,
  Philox and the affine map in one pass: each program generates ``BLOCK_N`` Philox blocks
  (8 decisions each, ``docs/rng.md`` section 4) and applies them to the ``8 * BLOCK_N``
  elements they decide;
* broadcast noise fields (spatial dropout channels first or last, timestep dropout, DropPath,
  Keras ``noise_shape``): ``_keep_kernel`` draws the small keep field, then ``_broadcast_kernel``
  applies it in one pass over x, for up to ``_MAX_DIMS`` (4) alternating full/broadcast axes
  after merging neighbours (``torch_ref.collapse``); more alternations fall back to
  ``torch_ref``'s expression on the Triton keep field;
* Gaussian dropout (every dtype, float64 included): ``gaussian``, the spec's float64 Box-Muller
  (stream 1) and the multiplication in one pass; ``normal_field`` draws the noise alone.

Philox is Triton's own (``tl.randint4x`` for stream 0; :func:`philox_block` for any stream),
which computes the spec's Philox4x32-10 with key ``(seed & 0xFFFFFFFF, seed >> 32)``.

Arithmetic, as ``torch_ref.apply_keep``: ``kept = x * scale`` in float32 (``scale`` rounded to
float32, as torch rounds a Python scalar for a float32/16-bit tensor), rounded to the input
dtype; ``+ shift`` in float32 when non-zero, rounded again (launched with
``enable_fp_fusion=False``: no FMA); ``fill`` where dropped.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .. import rng
from . import torch_ref

__all__ = ["apply", "box_muller_words", "gaussian", "keep_field", "normal_field", "philox_block"]

_BLOCK_N = 128  # Philox blocks per program: 1024 elements
_BLOCK = 8 * _BLOCK_N  # elements per program of the broadcast kernel
_MAX_DIMS = 4  # collapsed axes the broadcast kernel handles (more: keep field + torch_ref)
_INT32_MAX = 2**31 - 1  # row indices beyond this need 64-bit divisions

_DTYPES = {torch.float32: tl.float32, torch.float16: tl.float16, torch.bfloat16: tl.bfloat16}


def _seed(key: tuple[int, int]) -> int:
    """The 64-bit seed ``k0 | k1 << 32`` of a key (Triton's Philox splits it back into words)."""
    return (int(key[0]) & 0xFFFFFFFF) | ((int(key[1]) & 0xFFFFFFFF) << 32)


@triton.jit
def philox_block(seed, n, stream: tl.constexpr):
    """The four Philox4x32-10 words of blocks ``n`` of stream ``stream`` (``docs/rng.md``).

    Args:
        seed: the 64-bit seed ``k0 | k1 << 32`` (any integer scalar, e.g. a kernel argument):
            Triton's ``philox`` uses key ``(seed & 0xFFFFFFFF, seed >> 32)``, the spec's key.
        n: block indices, a non-negative integer tensor (32-bit, or 64-bit beyond ``2**32``).
        stream: the counter word ``c2`` (constexpr): 0 Bernoulli, 1 Gaussian, 2 DropBlock.

    Returns:
        ``(r0, r1, r2, r3)``: uint32 tensors shaped like ``n``, the output of the counter
        ``(n & 0xFFFFFFFF, n >> 32, stream, 0)``. For stream 0 this is ``tl.randint4x(seed, n)``.
    """
    lo = n.to(tl.uint32)
    zero = lo * 0
    hi = zero  # a 32-bit n: `n >> 32` would be undefined
    if tl.constexpr(n.dtype.primitive_bitwidth) > 32:
        hi = (n >> 32).to(tl.uint32)
    return tl.random.philox(seed, lo, hi, zero + stream, zero)


@triton.jit
def _lanes(first_block, seed, BLOCK_N: tl.constexpr):
    """16-bit lanes of blocks ``first_block ... + BLOCK_N``: a (BLOCK_N, 8) uint32 tensor whose
    row n, column j is lane j of block n (word j // 2, low half for even j)."""
    n = first_block + tl.arange(0, BLOCK_N).to(tl.uint64)
    r0, r1, r2, r3 = tl.randint4x(seed, n)  # counter (n_lo, n_hi, 0, 0): stream 0
    j = tl.arange(0, 8)[None, :]
    word = tl.where(j < 2, r0[:, None],
                    tl.where(j < 4, r1[:, None], tl.where(j < 6, r2[:, None], r3[:, None])))
    return (word >> ((j & 1) * 16).to(tl.uint32)) & 0xFFFF


# Triton's CPU interpreter truncates float32 -> bfloat16 casts (even with an explicit "rtne"),
# so there `_round` rounds bfloat16 with integer ops; compiled, the cast is the hardware's
# round-to-nearest-even conversion (`cvt.rn.bf16.f32`: same bits, about 5 fewer instructions
# per element). Decided when this module is imported, as triton.jit decides interpretation.
_INTERPRETED = tl.constexpr(type(philox_block).__name__ == "InterpretedFunction")


@triton.jit
def _round(v, IS_BF16: tl.constexpr, dtype: tl.constexpr):
    """float32 -> ``dtype``, round to nearest even (a NaN stays a NaN; its payload is not
    specified, ``docs/rng.md`` section 4)."""
    if IS_BF16 and _INTERPRETED:
        bits = v.to(tl.uint32, bitcast=True)
        rounded = ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).to(tl.uint16)
        rounded = tl.where(v != v, 0x7FC0, rounded).to(tl.uint16)  # NaN stays NaN
        return rounded.to(tl.bfloat16, bitcast=True)
    return v.to(dtype, fp_downcast_rounding="rtne") if IS_BF16 else v.to(dtype)


@triton.jit
def _affine(x, keep, scale, shift, fill, HAS_SHIFT: tl.constexpr, IS_BF16: tl.constexpr):
    """``where(keep, x * scale (+ shift), fill)`` in ``x``'s dtype, as ``torch_ref.apply_keep``:
    the product (and the sum) in float32, each rounded to the dtype; ``fill`` exact there."""
    kept = _round(x.to(tl.float32) * scale, IS_BF16, x.dtype)
    if HAS_SHIFT:
        kept = _round(kept.to(tl.float32) + shift, IS_BF16, x.dtype)
    return tl.where(keep, kept, fill).to(x.dtype)


@triton.jit(do_not_specialize=["seed", "t"])
def _fused_kernel(x_ptr, out_ptr, numel, seed, t, scale, shift, fill,
                  HAS_SHIFT: tl.constexpr, IS_BF16: tl.constexpr, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    first = pid.to(tl.uint64) * BLOCK_N
    u = _lanes(first, seed, BLOCK_N)
    offs = (first * 8).to(tl.int64) + tl.arange(0, BLOCK_N)[:, None] * 8 + tl.arange(0, 8)[None, :]
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask)
    tl.store(out_ptr + offs, _affine(x, u >= t, scale, shift, fill, HAS_SHIFT, IS_BF16), mask=mask)


@triton.jit(do_not_specialize=["seed", "t"])
def _keep_kernel(out_ptr, count, seed, t, BLOCK_N: tl.constexpr):
    pid = tl.program_id(0)
    first = pid.to(tl.uint64) * BLOCK_N
    u = _lanes(first, seed, BLOCK_N)
    offs = (first * 8).to(tl.int64) + tl.arange(0, BLOCK_N)[:, None] * 8 + tl.arange(0, 8)[None, :]
    tl.store(out_ptr + offs, u >= t, mask=offs < count)


def _magic(d: int) -> tuple[int, int]:
    """Multiplier ``m < 2**32`` and shift ``s`` with ``n // d == (umulhi(n, m) + n) >> s`` for
    every ``0 <= n < 2**31`` (Granlund and Montgomery 1994, the unsigned round-up method;
    ``n + umulhi(n, m) <= 2 * n`` cannot overflow 32 bits there). ``d >= 1``."""
    s = (d - 1).bit_length()  # ceil(log2(d))
    return (1 << 32) * ((1 << s) - d) // d + 1, s


@triton.jit
def _divmod(n, d, magic, shift, WIDE: tl.constexpr):
    """``(n // d, n % d)`` of a non-negative integer tensor ``n``: int64 division if ``WIDE``,
    else (int32 ``n``) multiply and shift by ``_magic(d)``: a few integer ops where a GPU's
    32-bit division takes ~20."""
    if WIDE:
        q = n // d
    else:
        nu = n.to(tl.uint32)
        m = tl.to_tensor(magic).to(tl.uint32)  # to_tensor: a launch may specialize 1 to constexpr
        q = ((tl.umulhi(nu, m) + nu) >> tl.to_tensor(shift).to(tl.uint32)).to(tl.int32)
    return q, n - q * d


# The broadcast kernel reads its decisions from the keep field (one byte per field element,
# drawn by `_keep_kernel`) instead of running Philox for every element. A broadcast field is
# much smaller than x (spatial: N*C bytes), so it stays in L2 and costs next to no memory
# traffic, whereas per-element Philox (10 rounds, 2 umulhi + 2 mul each, ~80 integer ops; the
# element's field index is not shared with its neighbours in general) would make the kernel
# compute-bound: at 4.8 TB/s an H200 streams ~1.2e12 16-bit elements/s (read + write), about
# 14 integer ops per element of its int32 throughput. The price is one extra small launch.
# For the same reason the row -> field index divisions use `_divmod`'s multiply-shift.
@triton.jit
def _broadcast_kernel(x_ptr, keep_ptr, out_ptr, rows, cols, col_tiles, size1, size2,
                      magic1, shift1, magic2, shift2, stride0, stride1, stride2,
                      scale, shift, fill,
                      LAST_FULL: tl.constexpr, ROW64: tl.constexpr, HAS_SHIFT: tl.constexpr,
                      IS_BF16: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """x is seen as ``(rows, cols)``, rows ``(size0, size1, size2)`` row-major, the collapsed
    axes of x (``torch_ref.collapse``); ``stride0..2`` are the field strides of the row axes (0
    where broadcast), the column axis has field stride 1 if ``LAST_FULL`` else 0;
    ``magic``/``shift`` divide by ``size1``/``size2`` (``_magic``; unused if ``ROW64``). A
    program does a ``(BLOCK_R, BLOCK_C)`` tile: the row -> field index arithmetic is done per
    row."""
    pid = tl.program_id(0).to(tl.int64)
    tile_r = pid // col_tiles
    r = tile_r * BLOCK_R + tl.arange(0, BLOCK_R)
    c = (pid - tile_r * col_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)
    q, i2 = _divmod(r if ROW64 else r.to(tl.int32), size2, magic2, shift2, ROW64)
    i0, i1 = _divmod(q, size1, magic1, shift1, ROW64)
    field = i0.to(tl.int64) * stride0 + i1.to(tl.int64) * stride1 + i2.to(tl.int64) * stride2
    row_ok = r < rows
    mask = row_ok[:, None] & (c < cols)[None, :]
    if LAST_FULL:
        keep = tl.load(keep_ptr + (field[:, None] + c[None, :]), mask=mask, other=0)
    else:
        keep = tl.load(keep_ptr + field, mask=row_ok, other=0)[:, None]
    offs = r[:, None] * cols + c[None, :]
    x = tl.load(x_ptr + offs, mask=mask)
    result = _affine(x, keep != 0, scale, shift, fill, HAS_SHIFT, IS_BF16)
    tl.store(out_ptr + offs, result, mask=mask)


def _apply_broadcast(src, result, keep, sizes, strides, consts: dict) -> None:
    """Launch ``_broadcast_kernel`` for contiguous ``src`` -> ``result`` with at most
    ``_MAX_DIMS`` collapsed axes (``torch_ref.collapse``), padded in front with size-1 axes."""
    pad = _MAX_DIMS - len(sizes)
    sizes, strides = [1] * pad + sizes, [0] * pad + strides
    cols, rows = sizes[3], sizes[0] * sizes[1] * sizes[2]
    block_c = min(triton.next_power_of_2(cols), _BLOCK)
    block_r = _BLOCK // block_c
    col_tiles = triton.cdiv(cols, block_c)
    grid = (triton.cdiv(rows, block_r) * col_tiles,)
    _broadcast_kernel[grid](
        src, keep.view(torch.uint8), result, rows, cols, col_tiles, sizes[1], sizes[2],
        *_magic(sizes[1]), *_magic(sizes[2]), *strides[:3], LAST_FULL=strides[3] != 0,
        ROW64=rows + block_r > _INT32_MAX, BLOCK_R=block_r, BLOCK_C=block_c, **consts,
    )


def _grid(count: int) -> tuple[int]:
    return (triton.cdiv(triton.cdiv(count, 8), _BLOCK_N),)


def keep_field(key: tuple[int, int], t: int, count: int, device=None) -> torch.Tensor:
    """Boolean keep decisions of field elements ``0 ... count - 1`` (``torch_ref.keep_field``)."""
    out = torch.empty(count, dtype=torch.bool, device=device)
    if count:
        _keep_kernel[_grid(count)](out, count, _seed(key), t, BLOCK_N=_BLOCK_N,
                                   enable_fp_fusion=False)  # explicit: no triton 3.9 warning
    return out


def apply(
    x: torch.Tensor,
    key: tuple[int, int],
    t: int,
    noise_shape: tuple[int, ...],
    scale: float,
    shift: float,
    fill: float,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """``where(keep, x * scale + shift, fill)``, the keep field (``noise_shape``, stream 0)
    broadcast to ``x``: the same bits as ``torch_ref.apply``.

    Args:
        x: float32, float16 or bfloat16 (fused); other dtypes go to ``torch_ref.apply_keep``
            with a Triton keep field. The kernels walk x in its memory order (the contiguous
            view ``x.permute(torch_ref.physical_order(x))``; a non-dense ``x`` is read through
            a copy in that order) and read the field at its logical indices.
        key: the two key words; t: the threshold (kept iff ``u >= t``).
        noise_shape: x's rank, each axis 1 or x's size. Full and row-major in memory: Philox
            and the affine map in one kernel; otherwise, with at most ``_MAX_DIMS``
            alternating axes after merging in memory order (``torch_ref.collapse``) and a last
            axis that is broadcast or consecutive in the field: keep field, then one broadcast
            kernel; else (a full field in channels_last, ...) ``torch_ref.apply_keep``.
        scale, shift, fill: as ``rng.affine_params`` gives them.
        out: optional result tensor (dense, in x's memory format; may be ``x`` itself).

    Returns:
        The result in x's memory format (``torch.empty_like(x)``'s layout), or ``out``.
    """
    noise_shape = tuple(noise_shape)
    result = out if out is not None else torch.empty_like(x)
    order = torch_ref.physical_order(result)
    sizes, strides = torch_ref.collapse(tuple(x.shape), noise_shape, order)
    full = order is None and noise_shape == tuple(x.shape)
    if x.dtype not in _DTYPES or len(sizes) > _MAX_DIMS or (not full and strides[-1] > 1):
        keep = keep_field(key, t, math.prod(noise_shape), device=x.device)
        return torch_ref.apply_keep(x, keep.reshape(noise_shape), scale, shift, fill, out=out)
    if order is None:
        src, dst = x.contiguous(), result
    else:  # the memory-order views, both contiguous
        src, dst = x.permute(order).contiguous(), result.permute(order)
    if src.numel():
        consts = dict(
            scale=scale, shift=shift,  # fill rounded to x's dtype (exact in float32 then)
            fill=fill if fill == 0.0 else float(torch.tensor(fill, dtype=x.dtype)),
            HAS_SHIFT=shift != 0.0, IS_BF16=x.dtype == torch.bfloat16,
            enable_fp_fusion=False,  # x * scale, rounded, then + shift: no FMA
        )
        if full:
            _fused_kernel[_grid(src.numel())](
                src, dst, src.numel(), _seed(key), t, BLOCK_N=_BLOCK_N, **consts)
        else:
            keep = keep_field(key, t, math.prod(noise_shape), device=x.device)
            _apply_broadcast(src, dst, keep, sizes, strides, consts)
    return result


# Gaussian noise (stream 1, docs/rng.md section 5): ``dropkit.rng.box_muller`` transcribed
# operation by operation on float64 tensors, in the same order (``numba_cpu._box_muller`` is the
# scalar twin). Bit-identity rests on three things: the kernels are launched with
# ``enable_fp_fusion=False``, so a compiled ``a * b + c`` stays a multiply and an add (an FMA
# rounds once and changes the bits); a Python float constant meeting a float64 tensor is
# materialized in float64 by Triton (no coefficient is rounded to float32); ``std`` is declared
# ``tl.float64``, because a plain float kernel argument would be passed as float32. Philox is
# :func:`philox_block` (``tl.random.philox``) with counter ``(n_lo, n_hi, 1, 0)``.
_GAUSS_BLOCK_N = 128  # Philox blocks per program: 512 normals
_GAUSS_WARPS = 4
_GAUSS_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
_SQRT_HALF = tl.constexpr(rng._SQRT_HALF)
_LN2 = tl.constexpr(rng._LN2)
_HALF_PI = tl.constexpr(rng._HALF_PI)
_TWO_M32 = tl.constexpr(2.0**-32)
_TWO_M30 = tl.constexpr(2.0**-30)
_LOG_C = tl.constexpr(rng._LOG_COEF)
_SIN_C = tl.constexpr(rng._SIN_COEF)
_COS_C = tl.constexpr(rng._COS_COEF)
_LOG_N = tl.constexpr(len(rng._LOG_COEF))
_SIN_N = tl.constexpr(len(rng._SIN_COEF))
_COS_N = tl.constexpr(len(rng._COS_COEF))
_POW2_C = tl.constexpr(tuple(2.0 ** (2**bit) for bit in range(5)))
_NEWTON_STEPS = tl.constexpr(rng._NEWTON_STEPS)


@triton.jit
def _frexp(a):
    """``frexp`` of float64 ``a`` by bit operations: ``(m, e)``, ``a = m * 2**e``, ``m`` in
    [0.5, 1), exact for nonzero normal ``a``. Zero gives another pair, never used: the callers
    feed ``u1`` in [2**-32, 1], and :func:`_sqrt` returns 0 for ``a == 0`` as the spec does."""
    b = a.to(tl.uint64, bitcast=True)
    e = ((b >> 52) & 0x7FF).to(tl.int64) - 1022
    m = ((b & 0x800FFFFFFFFFFFFF) | 0x3FE0000000000000).to(tl.float64, bitcast=True)
    return m, e


@triton.jit
def _horner(x, COEF: tl.constexpr, N: tl.constexpr):
    """``COEF[0] + x * (COEF[1] + x * (...))`` for the ``N`` coefficients of ``COEF``, as
    ``rng._horner`` orders it."""
    acc = x * 0.0 + COEF[N - 1]
    for k in tl.static_range(N - 2, -1, -1):
        acc = acc * x + COEF[k]
    return acc


@triton.jit
def _pow2(h):
    """Exact ``2.0 ** h`` (float64) for an int64 tensor ``|h| < 32``, as ``rng._pow2``."""
    neg = h < 0
    habs = tl.where(neg, -h, h)
    out = h.to(tl.float64) * 0.0 + 1.0
    for bit in tl.static_range(5):
        factor = tl.where(neg, 1.0 / _POW2_C[bit], _POW2_C[bit]).to(tl.float64)
        out = out * tl.where((habs & (1 << bit)) != 0, factor, 1.0)
    return out


@triton.jit
def _sqrt(a):
    """``rng._sqrt``: range reduction, 5 Newton steps, times ``2**(e/2)``; 0 for ``a == 0``."""
    m, e = _frexp(a)
    odd = (e & 1) != 0
    m = tl.where(odd, m * 2.0, m)
    e = tl.where(odd, e - 1, e)
    g = 0.5 + 0.5 * m
    for _ in tl.static_range(_NEWTON_STEPS):
        g = 0.5 * (g + m / g)
    return tl.where(a == 0.0, 0.0, g * _pow2(e // 2))


@triton.jit
def _box_muller(ra, rb):
    """``rng.box_muller`` on float64 tensors holding 32-bit word values: ``(z_even, z_odd)``."""
    u1 = (ra + 1.0) * _TWO_M32
    m, ei = _frexp(u1)
    small = m < _SQRT_HALF
    m = tl.where(small, m * 2.0, m)
    e = m * 0.0 + tl.where(small, ei - 1, ei).to(tl.float64)
    s = (m - 1.0) / (m + 1.0)
    log_u1 = e * _LN2 + s * _horner(s * s, _LOG_C, _LOG_N)
    radius = _sqrt(-2.0 * log_u1)
    v = rb * _TWO_M30  # 4 * u2: quadrant q and fraction f, both exact
    q = tl.floor(v)
    f = v - q
    flip = f > 0.5
    f = tl.where(flip, 1.0 - f, f)
    t = f * _HALF_PI
    t2 = t * t
    sin_t = t * _horner(t2, _SIN_C, _SIN_N)
    cos_t = _horner(t2, _COS_C, _COS_N)
    sin_r = tl.where(flip, cos_t, sin_t)
    cos_r = tl.where(flip, sin_t, cos_t)
    cos_a = tl.where(q == 0, cos_r, tl.where(q == 1, -sin_r, tl.where(q == 2, -cos_r, sin_r)))
    sin_a = tl.where(q == 0, sin_r, tl.where(q == 1, cos_r, tl.where(q == 2, -sin_r, -cos_r)))
    return radius * cos_a, radius * sin_a


@triton.jit
def _normals(first, seed, BLOCK_N: tl.constexpr):
    """Normals of stream-1 blocks ``first ... first + BLOCK_N - 1``: a (BLOCK_N, 4) float64
    tensor whose row n, column j is field element ``4 * (first + n) + j``."""
    r0, r1, r2, r3 = philox_block(seed, first + tl.arange(0, BLOCK_N).to(tl.uint64), 1)
    # pair (r0, r1) makes elements 4n, 4n + 1; pair (r2, r3) makes 4n + 2, 4n + 3
    z_even, z_odd = _box_muller(tl.join(r0, r2).to(tl.float64), tl.join(r1, r3).to(tl.float64))
    return tl.interleave(z_even, z_odd)


@triton.jit
def _normal_offsets(first, BLOCK_N: tl.constexpr):
    """int64 offsets of the elements of :func:`_normals`' tile: (BLOCK_N, 4)."""
    return ((first * 4).to(tl.int64) + tl.arange(0, BLOCK_N)[:, None].to(tl.int64) * 4
            + tl.arange(0, 4)[None, :])


@triton.jit(do_not_specialize=["seed"])
def _normal_kernel(out_ptr, count, seed, BLOCK_N: tl.constexpr):
    first = tl.program_id(0).to(tl.uint64) * BLOCK_N
    offs = _normal_offsets(first, BLOCK_N)
    tl.store(out_ptr + offs, _normals(first, seed, BLOCK_N), mask=offs < count)


@triton.jit(do_not_specialize=["seed"])
def _gaussian_kernel(x_ptr, out_ptr, numel, seed, std: tl.float64,
                     IS_F64: tl.constexpr, IS_BF16: tl.constexpr, BLOCK_N: tl.constexpr):
    first = tl.program_id(0).to(tl.uint64) * BLOCK_N
    offs = _normal_offsets(first, BLOCK_N)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask)
    noise = 1.0 + std * _normals(first, seed, BLOCK_N)  # float64, as torch computes it
    if IS_F64:
        result = x * noise
    else:  # compute dtype float32: noise rounded to it, product rounded to x's dtype
        result = _round(x.to(tl.float32) * noise.to(tl.float32), IS_BF16, x.dtype)
    tl.store(out_ptr + offs, result, mask=mask)


@triton.jit
def _box_muller_kernel(ra_ptr, rb_ptr, z0_ptr, z1_ptr, count, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < count
    ra = tl.load(ra_ptr + offs, mask=mask, other=0).to(tl.uint32).to(tl.float64)
    rb = tl.load(rb_ptr + offs, mask=mask, other=0).to(tl.uint32).to(tl.float64)
    z0, z1 = _box_muller(ra, rb)
    tl.store(z0_ptr + offs, z0, mask=mask)
    tl.store(z1_ptr + offs, z1, mask=mask)


def _normal_grid(count: int) -> tuple[int]:
    return (triton.cdiv(triton.cdiv(count, rng.NORMALS_PER_BLOCK), _GAUSS_BLOCK_N),)


def normal_field(key: tuple[int, int], count: int, device=None) -> torch.Tensor:
    """Standard normal float64 noise of field elements ``0 ... count - 1`` (stream 1, the spec's
    Box-Muller): the same bits as ``torch_ref.normal_field`` and ``rng.normal_field``.

    Args:
        key: the Philox key ``(k0, k1)``, two 32-bit ints.
        count: number of field elements.
        device: where the result lives (a CUDA device; CPU under ``TRITON_INTERPRET=1``).

    Returns:
        A float64 tensor of shape ``(count,)``.
    """
    out = torch.empty(count, dtype=torch.float64, device=device)
    if count:
        _normal_kernel[_normal_grid(count)](
            out, count, _seed(key), BLOCK_N=_GAUSS_BLOCK_N, num_warps=_GAUSS_WARPS,
            enable_fp_fusion=False,
        )
    return out


def gaussian(x: torch.Tensor, key: tuple[int, int], std: float) -> torch.Tensor | None:
    """``x * (1 + std * z)`` fused, ``z`` the stream-1 normals of ``x``'s row-major positions.

    The same bits as ``dropkit::gaussian_mul``'s reference expression
    ``(x.to(ct) * (1.0 + std * z).to(ct)).to(x.dtype)``: ``1.0 + std * z`` in float64, rounded
    to the compute dtype ``ct`` (float32; float64 for float64 ``x``), times ``x`` in ``ct``,
    rounded to ``x``'s dtype (bfloat16 by integer round-to-nearest-even).

    Args:
        x: float32, float16, bfloat16 or float64 tensor of any shape and layout.
        key: the Philox key ``(k0, k1)``.
        std: the noise's standard deviation (a Python float, used in float64).

    Returns:
        A new tensor shaped and typed like ``x`` in x's memory format (computed in row-major
        order, then copied when that format is another), or ``None`` for other dtypes (the
        caller then uses the reference expression with :func:`normal_field`).
    """
    if x.dtype not in _GAUSS_DTYPES:
        return None
    src = x.contiguous()
    out = torch.empty_like(src, memory_format=torch.contiguous_format)
    if src.numel():
        _gaussian_kernel[_normal_grid(src.numel())](
            src, out, src.numel(), _seed(key), float(std), IS_F64=x.dtype == torch.float64,
            IS_BF16=x.dtype == torch.bfloat16, BLOCK_N=_GAUSS_BLOCK_N, num_warps=_GAUSS_WARPS,
            enable_fp_fusion=False,
        )
    return torch_ref.like_memory_format(out, x)


def box_muller_words(ra: torch.Tensor, rb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The kernels' Box-Muller on chosen word pairs ``ra[i], rb[i]`` (integer tensors of one
    shape holding 32-bit words; a test entry point, as ``numba_cpu.box_muller_words``).

    Returns:
        ``(z_even, z_odd)``, two flat float64 tensors on ``ra``'s device.
    """
    ra = ra.reshape(-1).to(torch.int64)
    rb = rb.reshape(-1).to(torch.int64)
    z0 = torch.empty(ra.numel(), dtype=torch.float64, device=ra.device)
    z1 = torch.empty_like(z0)
    if ra.numel():
        block = 512
        _box_muller_kernel[(triton.cdiv(ra.numel(), block),)](
            ra, rb, z0, z1, ra.numel(), BLOCK=block, enable_fp_fusion=False,
        )
    return z0, z1
