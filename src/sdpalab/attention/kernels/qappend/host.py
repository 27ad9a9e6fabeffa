"""The host side of quantize-and-append: which codecs the kernel writes, the checks, the launch.

``quantize_append_kv(k_codec, k, k_planes, v_codec, v, v_planes, pos)`` is, to the bit,
``planes[name].index_copy_(2, entries, codec.encode(x)[name])`` for keys and values, in one
launch: ``entries`` are ``[pos, pos + n)`` (KIVI keys: ``[pos / g, (pos + n) / g)``, whole
groups of g tokens). The planes are a static ``LinearStore``'s (``kvstore.allocate_planes``:
contiguous ``[B, H, capacity, ...]``), written in place. A decode loop builds a
:class:`QuantizeAppend` once (the planes checked once) and calls it each step. Importing this
module does not import Triton (``_kernel``); a caller checks :func:`refusal` and otherwise
falls back to encode + append.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import NamedTuple

import torch

from sdpalab.attention.errors import Unsupported
from sdpalab.attention.kernels.qdecode import interpreting
from sdpalab.attention.kvquant import BITS

KIND = {"none": 0, "int8": 1, "fp8": 2, "int4": 3, "kivi4": 3, "kivi2": 3}
"""Kernel kinds (``kernel.py``): 0 copy, 1 int8, 2 fp8, 3 asymmetric per token (int4, KIVI
values); KIVI keys are kind 4, asymmetric per channel over groups of tokens."""
MAX_CHANNEL_GROUPS = 32
"""Channel groups per token the kernel unrolls (head_dim / group_size)."""
MAX_GROUP_TILE = 16384
"""Codes of one KIVI key group (group_size x head_dim) a program holds."""
TILE = 1024
"""Codes per program of the per-token kinds: 8 rows of head_dim 128 (4 warps, 8 a thread)."""
INTERPRETED_TILE = 8192
"""The same under Triton's CPU interpreter, where each program costs Python time."""
NUM_WARPS = 4
_X_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


class RolePlan(NamedTuple):
    """What the kernel needs to know of one codec, all compile-time constants but ``granule``."""

    kind: int
    bits: int
    group: int  # channels per group (kinds 1-3; kinds 1, 2: head_dim), tokens per entry (kind 4)
    n_groups: int  # channel groups per token (kinds 1-3), else 1
    per: int  # codes per byte (1 for kinds 0-2)
    n_bytes: int  # stored elements of one token's data row (kind 0: head_dim)
    n_bytes_p2: int  # the same rounded up to a power of two
    granule: int  # tokens per entry


def _pow2(n: int) -> int:
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _plan(fmt: str, role: str, head_dim: int, group_size: int | None) -> RolePlan | str:
    """The plan of a codec, or why the kernel does not write it."""
    if fmt not in KIND:
        return f"quantize-append writes {', '.join(KIND)}; not {fmt!r}"
    if fmt == "none":
        return RolePlan(0, 16, head_dim, 1, 1, head_dim, _pow2(head_dim), 1)
    bits = BITS[fmt]
    per = 8 // bits if KIND[fmt] == 3 else 1
    n_bytes = _cdiv(head_dim, per)
    if fmt.startswith("kivi") and role == "key":
        if group_size * head_dim > MAX_GROUP_TILE:
            return (
                f"quantize-append holds a KIVI key group in one program: group_size "
                f"{group_size} x head_dim {head_dim} exceeds {MAX_GROUP_TILE} codes"
            )
        return RolePlan(4, bits, group_size, 1, per, n_bytes, _pow2(n_bytes), group_size)
    if KIND[fmt] < 3:
        return RolePlan(KIND[fmt], bits, head_dim, 1, 1, n_bytes, _pow2(n_bytes), 1)
    n_groups = _cdiv(head_dim, group_size)
    if n_groups > MAX_CHANNEL_GROUPS:
        return (
            f"quantize-append unrolls at most {MAX_CHANNEL_GROUPS} channel groups; group_size "
            f"{group_size} gives {n_groups} for head_dim {head_dim}"
        )
    return RolePlan(3, bits, group_size, n_groups, per, n_bytes, _pow2(n_bytes), 1)


@functools.cache
def _has_triton() -> bool:
    return importlib.util.find_spec("triton") is not None


def availability(device: torch.device | str | None = None) -> str | None:
    """None when the kernel can run on ``device`` (default: a CUDA device), else why not."""
    if not _has_triton():
        return "quantize-append needs triton (pip install triton)"
    if interpreting():
        return None
    kind = torch.device(device).type if device is not None else "cuda"
    if kind != "cuda" or not torch.cuda.is_available():
        return f"quantize-append needs a CUDA GPU (or TRITON_INTERPRET=1 for testing); got {kind}"
    return None


def refusal(*codecs, device: torch.device | str | None = None) -> str | None:
    """None when one launch can write these codecs' planes on ``device``, else why not: the
    caller then falls back to ``codec.encode`` + ``store.append``."""
    if reason := availability(device):
        return reason
    for codec in codecs:
        plan = _plan(codec.fmt, codec.role, codec.head_dim, codec.group_size)
        if isinstance(plan, str):
            return plan
    return None


@functools.cache
def _kernel():
    """The kernel, imported on the first launch (it imports triton; module doc)."""
    from sdpalab.attention.kernels.qappend.kernel import qappend_kernel

    return qappend_kernel


class _Role:
    """One codec's planes, checked once: the kernel's constant arguments for them."""

    def __init__(self, codec, planes: dict[str, torch.Tensor], name: str) -> None:
        plan = _plan(codec.fmt, codec.role, codec.head_dim, codec.group_size)
        if isinstance(plan, str):
            raise Unsupported(plan)
        if planes.keys() != codec.entry_shapes.keys():
            raise ValueError(
                f"{name} planes are {sorted(planes)}; the {codec.fmt} codec writes "
                f"{sorted(codec.entry_shapes)}"
            )
        first = next(iter(planes.values()))
        for key, t in planes.items():
            rest, dtype = codec.entry_shapes[key]
            if t.dim() < 3 or t.shape[:3] != first.shape[:3] or t.shape[3:] != rest:
                raise ValueError(
                    f"{name} plane {key!r} is {tuple(t.shape)}; expected [B, H, entries, *{rest}]"
                    f" like {tuple(first.shape[:3])}"
                )
            if t.dtype != dtype:
                raise ValueError(f"{name} plane {key!r} is {t.dtype}; the codec stores {dtype}")
            if not t.is_contiguous():
                raise ValueError(f"{name} plane {key!r} must be contiguous (a static store's own)")
            if t.device != first.device:
                raise ValueError(f"{name} planes are on {t.device} and {first.device}")
        self.name, self.codec, self.plan = name, codec, plan
        self.batch, self.heads, self.capacity = first.shape[:3]
        self.device = first.device
        data = planes["x"] if plan.kind == 0 else planes["data"]
        scale = planes.get("scale", data)
        self.tensors = (data, scale, planes.get("zero", scale))
        self.geometry: dict[int, tuple] = {}

    def launch_args(self, x: torch.Tensor):
        """(runtime arguments, constexprs, programs) for the new tokens ``x [B, H, n, D]``."""
        shape = x.shape
        held = (self.batch, self.heads)
        if len(shape) != 4 or shape[3] != self.codec.head_dim or shape[:2] != held:
            raise ValueError(
                f"{self.name} has shape {tuple(shape)}; its planes hold [B={self.batch}, "
                f"H={self.heads}, n, D={self.codec.head_dim}]"
            )
        if x.dtype not in _X_DTYPES:
            raise ValueError(
                f"{self.name} is {x.dtype}; quantize-append reads float16, bfloat16, float32"
            )
        if x.device != self.device:
            raise ValueError(f"{self.name} is on {x.device}; its planes on {self.device}")
        geometry = self.geometry.get(shape[2]) or self._geometry(shape[2])
        n_tok, n_rows, consts, programs = geometry
        return (x, *self.tensors, n_rows, n_tok, self.capacity, *x.stride()), consts, programs

    def _geometry(self, n: int):
        """(rows of axis 2, rows, constexprs, programs) for n new tokens, kept per n."""
        plan = self.plan
        if n % plan.granule:
            raise ValueError(
                f"{self.name}: {self.codec.fmt} {self.codec.role}s are written in whole groups "
                f"of {plan.granule} tokens; got {n}"
            )
        n_tok = n // plan.granule  # rows of axis 2: tokens, or KIVI key groups
        n_rows = self.batch * self.heads * n_tok
        if plan.kind == 4:
            block, programs = _pow2(plan.group), n_rows
        else:
            tile = INTERPRETED_TILE if interpreting() else TILE
            block = max(1, min(_pow2(n_rows), tile // (plan.n_bytes_p2 * plan.per)))
            programs = _cdiv(n_rows, block)
        self.geometry[n] = (n_tok, n_rows, (*plan[:6], plan.n_bytes_p2, block), programs)
        return self.geometry[n]

    def check_pos(self, pos: int, n: int) -> None:
        granule = self.plan.granule
        if pos < 0 or pos % granule or (pos + n) // granule > self.capacity:
            raise ValueError(
                f"pos={pos} with {n} new tokens does not fit the {self.name} planes' "
                f"{self.capacity} entries of {granule} token(s) (pos a multiple of {granule})"
            )


class QuantizeAppend:
    """Writes new keys (and values) into one static store's planes, one launch a call.

    The planes (``LinearStore.planes`` of a static store, or ``Codec.encode``-shaped
    ``[B, H, capacity, ...]`` contiguous tensors) are checked once, here; each call checks only
    its new tokens. Calling it with ``k [B, H, n, D]``, ``v [B, H, n', D]`` and ``pos`` leaves
    the planes exactly as ``codec.encode`` + ``index_copy_`` at entries ``[pos, pos + n)``
    (KIVI keys: ``[pos / g, (pos + n) / g)``) would.
    """

    def __init__(self, k_codec, k_planes: dict, v_codec=None, v_planes: dict | None = None):
        self.roles = [_Role(k_codec, k_planes, "k")]
        if reason := availability(self.roles[0].device):
            raise Unsupported(reason)
        if v_codec is not None:
            k_role, v_role = self.roles[0], _Role(v_codec, v_planes, "v")
            k_held = (k_role.batch, k_role.heads, k_role.device, k_codec.head_dim)
            if (v_role.batch, v_role.heads, v_role.device, v_codec.head_dim) != k_held:
                raise ValueError("key and value planes must share batch, heads, head_dim, device")
            self.roles.append(v_role)
        self.head_dim = k_codec.head_dim

    def __call__(self, k_BHnD: torch.Tensor, v_BHnD: torch.Tensor | None = None, pos=0) -> None:
        """``pos``: an int, or a one-element int tensor on the device (read by the kernel, for
        CUDA graphs; then entries past the capacity are dropped, not refused)."""
        k_role = self.roles[0]
        k_args, k_consts, programs = k_role.launch_args(k_BHnD)
        if len(self.roles) == 2:
            if v_BHnD is None:
                raise ValueError("this appender writes keys and values; pass v")
            v_args, v_consts, v_programs = self.roles[1].launch_args(v_BHnD)
            programs = max(programs, v_programs)
        else:
            if v_BHnD is not None:
                raise ValueError("this appender writes keys only; build it with v_codec, v_planes")
            v_args, v_consts = k_args, k_consts
        if isinstance(pos, torch.Tensor):
            if pos.numel() != 1 or pos.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"pos must be an int or a one-element int tensor; got {pos!r}")
            if pos.device != k_role.device:
                raise ValueError(f"pos is on {pos.device}; the planes on {k_role.device}")
            pos_ptr, pos_int = pos, 0
        elif isinstance(pos, int) and not isinstance(pos, bool):
            for role, x in zip(self.roles, (k_BHnD, v_BHnD), strict=False):  # v may be unused
                role.check_pos(pos, x.shape[2])
            pos_ptr, pos_int = k_BHnD, pos
        else:
            raise ValueError(f"pos must be an int or a one-element int tensor; got {pos!r}")
        if programs == 0:
            return
        _kernel()[(programs, len(self.roles))](
            pos_ptr, pos_int, k_role.heads, *k_args, *v_args, *k_consts, *v_consts,
            HEAD_DIM=self.head_dim, POS_PTR=pos_ptr is pos, HAS_V=len(self.roles) == 2,
            num_warps=NUM_WARPS,
        )  # fmt: skip


def quantize_append_kv(
    k_codec,
    k_BHnD: torch.Tensor,
    k_planes: dict[str, torch.Tensor],
    v_codec=None,
    v_BHnD: torch.Tensor | None = None,
    v_planes: dict[str, torch.Tensor] | None = None,
    pos: int | torch.Tensor = 0,
) -> None:
    """Quantize keys ``k [B, H, n, D]`` and values ``v [B, H, n', D]`` (any strides, float16,
    bfloat16 or float32) in their codecs' formats into their planes from token ``pos`` on, in
    one launch: exactly ``codec.encode`` + ``index_copy_``. ``v_codec=None``: keys only. A
    decode loop builds a :class:`QuantizeAppend` once instead (the planes checked once).
    Raises ``Unsupported`` where :func:`refusal` says."""
    QuantizeAppend(k_codec, k_planes, v_codec, v_planes)(k_BHnD, v_BHnD, pos)


def quantize_append(
    codec, x_BHnD: torch.Tensor, planes: dict[str, torch.Tensor], pos: int | torch.Tensor
) -> None:
    """One role of :func:`quantize_append_kv`: ``x [B, H, n, D]`` into ``planes`` at ``pos``."""
    QuantizeAppend(codec, planes)(x_BHnD, None, pos)
