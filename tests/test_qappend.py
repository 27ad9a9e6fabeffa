"""Quantize-and-append (``kernels/qappend``): one launch writes exactly the bytes that
``Codec.encode`` + ``index_copy_`` write, and nothing else.

On the CPU in Triton's interpreter (``conftest.py`` sets ``TRITON_INTERPRET=1`` without a GPU),
on CUDA compiled. Every format and role, head_dim 64, 80 and 128, batch and heads above one,
1 and 3 new tokens, positions at the start, middle and end of the capacity, strided inputs,
outliers, all-zero and constant rows, rounding ties; the planes start as random bytes, so a
byte written outside ``[pos, pos + n)`` shows.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from sdpalab.attention.errors import Unsupported
from sdpalab.attention.kernels.qappend import (
    availability,
    quantize_append,
    quantize_append_kv,
    refusal,
)
from sdpalab.attention.kvstore import Codec, LinearStore

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(availability(DEVICE) is not None, reason=str(availability(DEVICE)))

TOKEN_CODECS = [("none", "value"), ("int8", "key"), ("fp8", "value"), ("int4", "key"),
                ("kivi2", "value"), ("kivi4", "value")]  # fmt: skip
KEY_GROUP_CODECS = [("kivi2", "key"), ("kivi4", "key")]
B, H = 2, 3


def codec(fmt, role, head_dim, dtype=torch.bfloat16, group_size=None) -> Codec:
    return Codec(fmt, role, head_dim, dtype, DEVICE, group_size)


def random_planes(c: Codec, entries: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A static store's planes full of random bytes (so untouched bytes are recognisable)."""
    planes = LinearStore(c.entry_shapes, B, H, DEVICE, entries).planes
    gen = torch.Generator().manual_seed(seed)
    for t in planes.values():
        raw = t.view(torch.uint8)
        raw.copy_(torch.randint(0, 256, raw.shape, generator=gen, dtype=torch.uint8))
    return planes


def awkward(n: int, head_dim: int, dtype=torch.bfloat16, seed: int = 0) -> torch.Tensor:
    """``[B, H, n, D]`` Gaussian keys with an offset, outliers, an all-zero row and a constant
    row, as a transposed view of ``[B, n, H, D]`` (how a model's projection comes out)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(B, n, H, head_dim, generator=gen) * 2 + 0.5
    x[0, 0, 1, 3] = 300.0  # an outlier: the rest of its row and group collapse to few codes
    x[1, n - 1, 0, head_dim - 1] = -1e3
    x[1, 0, 2] = 0.0  # all-zero row: scale 0, divided by one
    x[0, n - 1, 2] = 0.5  # constant row: asymmetric scale 0, exact in the zero
    return x.to(dtype).to(DEVICE).transpose(1, 2)


def expected(c: Codec, x: torch.Tensor, planes, pos: int):
    """What encode + index_copy_ leave in a copy of ``planes``."""
    out = {name: t.clone() for name, t in planes.items()}
    encoded = c.encode(x)
    first = pos // c.granule
    index = torch.arange(first, first + x.shape[2] // c.granule, device=DEVICE)
    for name, t in out.items():
        t.index_copy_(2, index, encoded[name])
    return out


def assert_same_bytes(got, want, c: Codec | None = None):
    """The same bytes; on CUDA, given the codec, the same values within one quantization step
    where they differ: torch's CUDA encode contracts multiply-adds into FMAs, so a code at a
    rounding boundary may land one step away (the interpreter on the CPU matches bit for bit)."""
    assert got.keys() == want.keys()
    if c is not None and DEVICE == "cuda" and c.fmt in ROUNDS_APART:
        return assert_within_a_step(got, want, c)
    for name in want:
        g, w = got[name].view(torch.uint8), want[name].view(torch.uint8)
        if not torch.equal(g, w):
            where = (g != w).nonzero()[:5].tolist()
            raise AssertionError(f"plane {name!r} differs at {where} (of {tuple(g.shape)})")


ROUNDS_APART = ("fp8", "int4", "kivi2", "kivi4")
LEVELS = {"int4": 15, "kivi4": 15, "kivi2": 3}


def assert_within_a_step(got, want, c: Codec) -> None:
    differ = torch.zeros(got["data"].shape[2], dtype=torch.bool, device=DEVICE)
    for name in want:
        g, w = got[name].view(torch.uint8), want[name].view(torch.uint8)
        differ |= (g != w).flatten(3).any(-1).any(0).any(0)  # every plane is [B, H, E, ...]
    entries = differ.nonzero().flatten()
    if not len(entries):
        return
    pick = {name: t.index_select(2, entries) for name, t in got.items()}
    mine = c.decode(pick).float()
    theirs = c.decode({name: t.index_select(2, entries) for name, t in want.items()}).float()
    if c.fmt == "fp8":
        step = theirs.abs() / 8 + 2.0**-9
    else:
        axis = 2 if c.granule > 1 else -1  # KIVI keys per channel over the group, else per token
        span = theirs.amax(axis, keepdim=True) - theirs.amin(axis, keepdim=True)
        step = span / LEVELS[c.fmt] + 1e-6
    off = (mine - theirs).abs() > step * 1.01
    assert not off.any(), f"{c.fmt}: {int(off.sum())} values more than one step apart"
    assert (mine != theirs).float().mean() < 0.05, f"{c.fmt}: too many codes apart"


def positions(capacity: int, n: int, granule: int = 1) -> dict[str, int]:
    return {"start": 0, "middle": (capacity // 2) * granule, "end": capacity * granule - n}


@pytest.mark.parametrize("where", ["start", "middle", "end"])
@pytest.mark.parametrize("n", [1, 3])
@pytest.mark.parametrize("head_dim", [64, 80, 128])
@pytest.mark.parametrize(("fmt", "role"), TOKEN_CODECS)
def test_per_token_formats_match_encode_bitwise(fmt, role, head_dim, n, where):
    c = codec(fmt, role, head_dim)
    capacity = 9
    pos = positions(capacity, n)[where]
    planes = random_planes(c, capacity, seed=head_dim + n)
    x = awkward(n, head_dim, seed=pos)
    want = expected(c, x, planes, pos)
    quantize_append(c, x, planes, pos)
    assert_same_bytes(planes, want, c)


@pytest.mark.parametrize("where", ["start", "middle", "end"])
@pytest.mark.parametrize("groups", [1, 2])
@pytest.mark.parametrize("head_dim", [64, 80, 128])
@pytest.mark.parametrize(("fmt", "role"), KEY_GROUP_CODECS)
def test_kivi_key_groups_match_encode_bitwise(fmt, role, head_dim, groups, where):
    """KIVI keys: whole groups of g tokens (the residual ring's flush) at entry ``pos / g``."""
    c = codec(fmt, role, head_dim)
    capacity, n = 4, groups * c.granule
    pos = positions(capacity, n, c.granule)[where]
    planes = random_planes(c, capacity, seed=head_dim)
    x = awkward(n, head_dim, seed=groups)
    want = expected(c, x, planes, pos)
    quantize_append(c, x, planes, pos)
    assert_same_bytes(planes, want, c)


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize(("fmt", "role"), [*TOKEN_CODECS, ("kivi4", "key")])
def test_float16_and_float32_inputs(fmt, role, dtype):
    c = codec(fmt, role, 128, dtype)
    n = c.granule * (2 if c.granule == 1 else 1)
    planes = random_planes(c, 3)
    x = awkward(n, 128, dtype)
    want = expected(c, x, planes, c.granule)
    quantize_append(c, x, planes, c.granule)
    assert_same_bytes(planes, want, c)


@pytest.mark.parametrize("fmt", ["int8", "fp8", "int4", "kivi2"])
def test_rounding_ties_and_fp8_subnormals(fmt):
    """Rows whose scale is exactly 1 (zero 0 for the asymmetric formats), so each element is
    its own quotient: halves round to even, and fp8 sees its subnormals and their ties."""
    c = codec(fmt, "value", 64, torch.float32, group_size=64 if fmt != "int8" else None)
    top = {"int8": 127.0, "fp8": 448.0, "int4": 15.0, "kivi2": 3.0}[fmt]
    halves = torch.arange(64, dtype=torch.float32) % (2 * top) / 2  # 0, 0.5, 1, 1.5, ...
    subnormal = torch.arange(64, dtype=torch.float32) * 2.0**-10  # e4m3 steps are 2^-9
    near_one = 1 + torch.arange(64, dtype=torch.float32) * 2.0**-5  # ties of 3 mantissa bits
    rows = torch.stack([halves, subnormal, near_one, -halves])
    rows[:, 0], rows[:, 1] = top, 0.0  # amax `top` (scale 1) and minimum 0 (zero 0)
    if fmt != "int8" and fmt != "fp8":
        rows[3] = rows[3] + top  # asymmetric rows stay in [0, top]
    x = rows.view(1, 1, 4, 64).expand(B, H, 4, 64).to(DEVICE)
    planes = random_planes(c, 5)
    want = expected(c, x, planes, 1)
    quantize_append(c, x, planes, 1)
    assert_same_bytes(planes, want, c)


@pytest.mark.parametrize(("fmt", "role"), [("int8", "key"), ("int4", "key"), ("kivi2", "value"),
                                         ("kivi2", "key")])  # fmt: skip
def test_odd_head_dim(fmt, role):
    """head_dim 65: a last byte with fewer codes than it holds, a one-channel last group."""
    c = codec(fmt, role, 65)
    n = c.granule
    planes = random_planes(c, 3)
    x = awkward(n, 65)
    want = expected(c, x, planes, n)
    quantize_append(c, x, planes, n)
    assert_same_bytes(planes, want, c)


def test_strided_inputs():
    """Head-dim elements not next to each other (a [B, H, D, n] buffer seen as [B, H, n, D])."""
    c = codec("int4", "value", 80, group_size=32)
    x = awkward(3, 80).transpose(2, 3).contiguous().transpose(2, 3)
    assert x.stride(-1) != 1
    planes = random_planes(c, 6)
    want = expected(c, x, planes, 2)
    quantize_append(c, x, planes, 2)
    assert_same_bytes(planes, want, c)


@pytest.mark.parametrize(
    ("k_fmt", "v_fmt"), [("int8", "int8"), ("int4", "fp8"), ("none", "none"), ("kivi4", "kivi4")]
)
def test_keys_and_values_in_one_launch(k_fmt, v_fmt):
    """Two codecs, two plane sets, one call; KIVI: a key group and its g value tokens (a
    flush). Each role's planes come out as its own encode + index_copy_ would leave them."""
    kc = codec(k_fmt, "key", 128)
    vc = codec(v_fmt, "value", 128)
    n = kc.granule if kc.granule > 1 else 3
    pos = 2 * kc.granule
    k_planes = random_planes(kc, 6, seed=1)
    v_planes = random_planes(vc, 6 * kc.granule, seed=2)
    k, v = awkward(n, 128, seed=1), awkward(n, 128, seed=2)
    k_want, v_want = expected(kc, k, k_planes, pos), expected(vc, v, v_planes, pos)
    quantize_append_kv(kc, k, k_planes, vc, v, v_planes, pos)
    assert_same_bytes(k_planes, k_want, kc)
    assert_same_bytes(v_planes, v_want, vc)


def test_position_from_a_device_tensor():
    """``pos`` read by the kernel (a CUDA graph replays it): same bytes; a write past the
    capacity is dropped, leaving every byte as it was."""
    c = codec("int8", "key", 64)
    planes = random_planes(c, 5)
    x = awkward(2, 64)
    want = expected(c, x, planes, 3)
    quantize_append(c, x, planes, torch.tensor([3], device=DEVICE))
    assert_same_bytes(planes, want, c)
    before = {name: t.clone() for name, t in planes.items()}
    quantize_append(c, x, planes, torch.tensor(5, device=DEVICE))
    assert_same_bytes(planes, before)


def test_decode_steps_into_a_static_store():
    """The integration: a static LinearStore filled by a prefill and then token by token
    holds the same bytes as one filled by encode + append, and decodes to the same values."""
    kc, vc = codec("int4", "key", 128), codec("int4", "value", 128)
    ours = [LinearStore(c.entry_shapes, B, H, DEVICE, 12) for c in (kc, vc)]
    theirs = [LinearStore(c.entry_shapes, B, H, DEVICE, 12) for c in (kc, vc)]
    for step, n in enumerate([5, 1, 1, 1, 3]):
        k, v = awkward(n, 128, seed=step), awkward(n, 128, seed=step + 100)
        quantize_append_kv(kc, k, ours[0].planes, vc, v, ours[1].planes, ours[0].length)
        for store in ours:
            store.length += n
        theirs[0].append(kc.encode(k))
        theirs[1].append(vc.encode(v))
    for mine, ref, c in zip(ours, theirs, (kc, vc), strict=True):
        assert_same_bytes(mine.planes, ref.planes, c)
        if DEVICE == "cpu":  # on CUDA within a step: assert_same_bytes
            assert torch.equal(c.decode(mine.read(0, 11)), c.decode(ref.read(0, 11)))


def test_refusals_name_the_problem():
    c = codec("int4", "value", 128, group_size=2)  # 64 channel groups: more than unrolled
    assert "channel groups" in refusal(c)
    with pytest.raises(Unsupported, match="channel groups"):
        quantize_append(c, awkward(1, 128), random_planes(c, 2), 0)
    assert refusal(codec("int8", "key", 128), codec("kivi2", "key", 128)) is None

    kivi = codec("kivi2", "key", 64)
    with pytest.raises(ValueError, match="whole groups of 32"):
        quantize_append(kivi, awkward(3, 64), random_planes(kivi, 2), 0)
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_append(kivi, awkward(32, 64), random_planes(kivi, 2), 16)
    int8 = codec("int8", "key", 64)
    with pytest.raises(ValueError, match="does not fit"):
        quantize_append(int8, awkward(3, 64), random_planes(int8, 4), 2)
    with pytest.raises(ValueError, match="planes are"):
        quantize_append(int8, awkward(1, 64), random_planes(codec("int4", "key", 64), 4), 0)
    with pytest.raises(ValueError, match="contiguous"):
        planes = {k: t.transpose(0, 1) for k, t in random_planes(int8, 4).items()}
        quantize_append(int8, awkward(1, 64).transpose(0, 1), planes, 0)
