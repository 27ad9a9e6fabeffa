"""KV-cache quantization: pure quantize / dequantize functions over ``[B, H, S, D]`` tensors.

These are the storage formats of a quantized KV cache. A fused decode kernel reads exactly these
layouts, so they are specified here to the bit. All tensors are contiguous, row-major; ``g`` is
``group_size``; codes are round-to-nearest.

``int8`` — symmetric, one scale per (batch, head, token)::

    data  int8     [B, H, S, D]      code c in [-127, 127]
    scale float16  [B, H, S, 1]      amax_d |x| / 127, rounded up to float16
    x ≈ c * scale

``int4`` — asymmetric, groups of ``g`` channels along D (default g = 64); group j covers channels
``[j*g, min((j+1)*g, D))``, so the last group is shorter when g does not divide D::

    data  uint8    [B, H, S, ceil(D/2)]   channel d in byte d // 2, even d in the low nibble
    scale float16  [B, H, S, ceil(D/g)]   (max - zero) / 15, rounded up to float16
    zero  float16  [B, H, S, ceil(D/g)]   the value of code 0: the group minimum rounded down
    x ≈ c * scale + zero,  c in [0, 15]

``fp8`` — float8 e4m3 (``float8_e4m3fn``) with one scale per (batch, head, token)::

    data  float8_e4m3fn [B, H, S, D]
    scale float16       [B, H, S, 1]      amax_d |x| / 448, rounded up to float16
    x ≈ float(data) * scale

``kivi2`` / ``kivi4`` (KIVI, Liu et al. 2024) — b-bit asymmetric codes (b = 2 or 4), ``8/b``
codes per byte along D: channel d in byte ``d // (8/b)`` at bit ``(d % (8/b)) * b``.
``x ≈ c * scale + zero``, c in ``[0, 2^b - 1]``, scale and zero rounded as for int4.

- ``role="key"``: per channel over groups of g tokens (default g = 32; S must be a multiple of
  g)::

    data  uint8    [B, H, S, ceil(D*b/8)]
    scale float16  [B, H, S/g, D]      token t uses row t // g
    zero  float16  [B, H, S/g, D]

- ``role="value"``: per token, groups of g channels along D (default g = 32), laid out as int4
  with b bits: data ``[B, H, S, ceil(D*b/8)]``, scale and zero ``[B, H, S, ceil(D/g)]``.

KIVI's full-precision window of recent tokens belongs to the cache (``kvcache``), not here.

Rounding the scale up and the zero down to float16 keeps every code inside its range, so each
element's reconstruction error is at most ``scale / 2`` (int formats) in exact arithmetic;
:func:`error_bound` returns that bound per element. Values must fit float16 scales
(``|x| < 65504 * 127`` for int8, and a group range below 65504 * 15 for the asymmetric ones).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from sdpalab.attention.errors import Unsupported

FORMATS = ("int8", "int4", "fp8", "kivi2", "kivi4")
ROLES = ("key", "value")
DEFAULT_GROUP = {"int4": 64, "kivi2": 32, "kivi4": 32}
BITS = {"int8": 8, "int4": 4, "fp8": 8, "kivi2": 2, "kivi4": 4}
_FP8_MAX = 448.0
_FP8_UNIT_ROUNDOFF = 2.0**-4  # 3 mantissa bits: relative error of a normal value
_FP8_SUBNORMAL_HALF_STEP = 2.0**-10  # half the spacing of e4m3's subnormals (2^-9)


@dataclass(frozen=True)
class QTensor:
    """A quantized ``[B, H, S, D]`` tensor in one of :data:`FORMATS` (layouts in the module doc)."""

    fmt: str
    data: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor | None
    """Value of code 0 (asymmetric formats); None for int8 and fp8."""
    head_dim: int
    role: str = "value"
    """``key`` or ``value``; changes the layout of the KIVI formats only."""
    group_size: int | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        batch, heads, seq = self.data.shape[:3]
        return (batch, heads, seq, self.head_dim)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The stored tensors by name (``data``, ``scale`` and, if asymmetric, ``zero``)."""
        out = {"data": self.data, "scale": self.scale}
        if self.zero is not None:
            out["zero"] = self.zero
        return out


def group_size_for(fmt: str, group_size: int | None = None) -> int | None:
    """The group length a format uses: ``group_size`` if given, else the format's default."""
    if fmt not in DEFAULT_GROUP:
        return None
    return DEFAULT_GROUP[fmt] if group_size is None else group_size


def _check(fmt: str, role: str, group_size: int | None) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"kv_quant={fmt!r} is not valid; choose one of: {', '.join(FORMATS)}")
    if role not in ROLES:
        raise ValueError(f"role={role!r} is not valid; choose one of: {', '.join(ROLES)}")
    if group_size is not None and (isinstance(group_size, bool) or group_size <= 0):
        raise ValueError(f"group_size={group_size!r} must be a positive integer")


@functools.cache
def fp8_supported(device_type: str) -> str | None:
    """None when float8_e4m3fn casts work on this device type, else the reason they don't."""
    if not hasattr(torch, "float8_e4m3fn"):
        return f"torch {torch.__version__} has no float8_e4m3fn"
    try:
        torch.ones(2, device=device_type).to(torch.float8_e4m3fn).float()
    except (RuntimeError, TypeError) as err:
        return f"float8_e4m3fn casts fail on {device_type}: {err}"
    return None


def _f16_up(x: torch.Tensor) -> torch.Tensor:
    """float32 → the smallest float16 not below it."""
    h = x.to(torch.float16)
    # full_like, not new_tensor: a Python scalar copied to the GPU would synchronize the stream
    return torch.where(h.float() < x, torch.nextafter(h, torch.full_like(h, float("inf"))), h)


def _f16_down(x: torch.Tensor) -> torch.Tensor:
    """float32 → the largest float16 not above it."""
    h = x.to(torch.float16)
    return torch.where(h.float() > x, torch.nextafter(h, torch.full_like(h, float("-inf"))), h)


def _safe(scale: torch.Tensor) -> torch.Tensor:
    # A zero scale means the group is constant and already exact in `zero`; any divisor works.
    return torch.where(scale == 0, torch.ones_like(scale), scale)


def _pack(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """uint8 codes ``[..., D]`` → bytes ``[..., ceil(D*bits/8)]``, lowest bits first."""
    per = 8 // bits
    pad = -codes.shape[-1] % per
    if pad:
        codes = torch.nn.functional.pad(codes, (0, pad))
    codes = codes.view(*codes.shape[:-1], -1, per).to(torch.int32)
    shifts = torch.arange(0, 8, bits, device=codes.device, dtype=torch.int32)
    return (codes << shifts).sum(-1).to(torch.uint8)


def _unpack(data: torch.Tensor, bits: int, head_dim: int) -> torch.Tensor:
    """Inverse of :func:`_pack`: bytes → int32 codes ``[..., head_dim]``."""
    shifts = torch.arange(0, 8, bits, device=data.device, dtype=torch.int32)
    codes = (data.to(torch.int32).unsqueeze(-1) >> shifts) & ((1 << bits) - 1)
    return codes.flatten(-2)[..., :head_dim]


def _channel_groups(x: torch.Tensor, group: int) -> torch.Tensor:
    """``[..., D]`` → ``[..., ceil(D/g), g]``; a short last group is padded by repeating its
    last channel, which leaves its min and max unchanged."""
    pad = -x.shape[-1] % group
    if pad:
        x = torch.cat([x, x[..., -1:].expand(*x.shape[:-1], pad)], dim=-1)
    return x.view(*x.shape[:-1], -1, group)


def _expand_channels(t: torch.Tensor, group: int, head_dim: int) -> torch.Tensor:
    """Per-group ``[..., ceil(D/g)]`` → per-channel ``[..., D]``."""
    return t.repeat_interleave(group, dim=-1)[..., :head_dim]


def _asymmetric(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int):
    """Codes of x given broadcastable group minimum and maximum; returns codes, scale, zero."""
    zero = _f16_down(lo)
    scale = _f16_up((hi - zero.float()) / ((1 << bits) - 1))
    codes = torch.round((x - zero.float()) / _safe(scale).float())
    return codes.clamp_(0, (1 << bits) - 1).to(torch.uint8), scale, zero


def quantize(
    x_BHSD: torch.Tensor, fmt: str, *, role: str = "value", group_size: int | None = None
) -> QTensor:
    """Quantize ``x [B, H, S, D]`` (any float dtype) into ``fmt``; see the module doc for layouts.

    ``role`` picks the KIVI layout (``key``: per channel over token groups, S a multiple of
    ``group_size``; ``value``: per token). ``group_size`` defaults to 64 for int4, 32 for KIVI.
    """
    _check(fmt, role, group_size)
    if x_BHSD.dim() != 4:
        raise ValueError(f"quantize expects [B, H, S, D]; got shape {tuple(x_BHSD.shape)}")
    x = x_BHSD.float()
    head_dim = x.shape[-1]
    group = group_size_for(fmt, group_size)
    if fmt == "int8":
        scale = _f16_up(x.abs().amax(-1, keepdim=True) / 127)
        data = torch.round(x / _safe(scale).float()).clamp_(-127, 127).to(torch.int8)
        return QTensor(fmt, data, scale, None, head_dim, role)
    if fmt == "fp8":
        reason = fp8_supported(x.device.type)
        if reason:
            raise Unsupported(reason)
        scale = _f16_up(x.abs().amax(-1, keepdim=True) / _FP8_MAX)
        data = (x / _safe(scale).float()).clamp_(-_FP8_MAX, _FP8_MAX).to(torch.float8_e4m3fn)
        return QTensor(fmt, data, scale, None, head_dim, role)
    bits = BITS[fmt]
    if fmt.startswith("kivi") and role == "key":
        batch, heads, seq, _ = x.shape
        if seq % group:
            raise ValueError(
                f"{fmt} keys are quantized in whole groups of {group} tokens; got {seq} tokens"
            )
        xg = x.view(batch, heads, seq // group, group, head_dim)
        lo, hi = xg.amin(-2, keepdim=True), xg.amax(-2, keepdim=True)
        codes, scale, zero = _asymmetric(xg, lo, hi, bits)
        data = _pack(codes.view(batch, heads, seq, head_dim), bits)
        return QTensor(fmt, data, scale.squeeze(-2), zero.squeeze(-2), head_dim, role, group)
    xg = _channel_groups(x, group)
    codes, scale, zero = _asymmetric(xg, xg.amin(-1, keepdim=True), xg.amax(-1, keepdim=True), bits)
    data = _pack(codes.flatten(-2)[..., :head_dim], bits)
    return QTensor(fmt, data, scale.squeeze(-1), zero.squeeze(-1), head_dim, role, group)


def _per_element(qt: QTensor, t: torch.Tensor) -> torch.Tensor:
    """Broadcast a scale-shaped tensor of an asymmetric format to ``[B, H, S, D]``."""
    if qt.role == "key" and qt.fmt.startswith("kivi"):
        return t.repeat_interleave(qt.group_size, dim=-2)
    return _expand_channels(t, qt.group_size, qt.head_dim)


def dequantize(qt: QTensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Reconstruct ``[B, H, S, D]`` in ``dtype`` (computed in float32, then cast)."""
    if qt.fmt == "int8":
        return (qt.data.float() * qt.scale.float()).to(dtype)
    if qt.fmt == "fp8":
        return (qt.data.float() * qt.scale.float()).to(dtype)
    codes = _unpack(qt.data, BITS[qt.fmt], qt.head_dim).float()
    scale = _per_element(qt, qt.scale.float())
    zero = _per_element(qt, qt.zero.float())
    return (codes * scale + zero).to(dtype)


def nbytes(qt: QTensor) -> int:
    """Bytes of every stored tensor: data + scales + zeros."""
    return sum(t.numel() * t.element_size() for t in qt.tensors().values())


def error_bound(qt: QTensor) -> torch.Tensor:
    """Largest possible ``|x - dequantize(qt)|`` per element, float32, broadcastable to
    ``[B, H, S, D]`` (exact arithmetic: half a quantization step; for fp8, half a unit in the
    last place of e4m3, relative to the value, or half a subnormal step)."""
    if qt.fmt == "int8":
        return qt.scale.float() / 2
    if qt.fmt == "fp8":
        xhat = qt.data.float().abs()
        u = _FP8_UNIT_ROUNDOFF
        return (xhat * (u / (1 - u)) + _FP8_SUBNORMAL_HALF_STEP) * qt.scale.float()
    return _per_element(qt, qt.scale.float()) / 2
