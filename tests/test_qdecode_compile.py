"""The triton_qdecode kernels compile for an H100 (sm_90), checked without a GPU.

Triton's CPU interpreter runs what its compiler refuses (plain Python globals, returns of
different shapes): both happened while the fast kernel was written, and only a GPU run found
them. Triton compiles to a cubin with its bundled ptxas on any machine, so this test compiles
every kernel configuration the launches use, in a subprocess with the interpreter off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")

SCRIPT = r"""
import json, sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from sdpalab.attention.kernels.qdecode.fast import fast_kernel
from sdpalab.attention.kernels.qdecode.general import general_kernel
from sdpalab.attention.kernels.qdecode.splits import merge_kernel

POINTERS = {"Q": "*bf16", "Out": "*bf16", "Part": "*fp32", "Lse": "*fp32", "KW": "*i32",
            "KS": "*fp16", "KZ": "*fp16", "VW": "*i32", "VS": "*fp16", "VZ": "*fp16",
            "KR": "*bf16", "VR": "*bf16"}


def build(kernel, consts, warps, stages):
    sig = {name: "constexpr" if name in consts else POINTERS.get(name, "i32")
           for name in kernel.arg_names}
    sig["qk_scale" if "qk_scale" in sig else "q_len"] = "fp32" if "qk_scale" in sig else "i32"
    src = ASTSource(fn=kernel, signature=sig, constexprs=consts)
    out = triton.compile(src, target=GPUTarget("cuda", 90, 32),
                         options={"num_warps": warps, "num_stages": stages})
    return len(out.asm["cubin"])


sizes = {}
for fmt, fid, e, ng, off, unit in [("int8", 1, 4, 1, 128.0, 2.0**24), ("fp8", 2, 4, 1, 0.0, 256.0),
                                   ("int4", 3, 8, 2, 0.0, 2.0**24)]:
    for causal, split in [(True, True), (False, False)]:
        consts = dict(G=4, HEAD_DIM=128, FMT=fid, E=e, WP=128 // e, NG=ng, OFF=off,
                      UNIT_INV=unit, R=16 // ng, BLOCK_N=128, CAUSAL=causal, SPLIT=split,
                      PREFETCH=True, PDL=split, BULK_L2=False, FUSED_MERGE=False)
        sizes[f"fast-{fmt}-{causal}"] = build(fast_kernel, consts, 2, 2)
    consts.update(R=4)  # the default: G = 4 rows, the 8-wide side of the products
    sizes[f"fast-{fmt}-tile4"] = build(fast_kernel, consts, 2, 2)
consts.update(BLOCK_N=64, BULK_L2=True)  # int4's default launch: scales of two groups loaded
# one block ahead, the first two blocks prefetched into L2
sizes["fast-int4-default"] = build(fast_kernel, consts, 1, 3)
consts.update(NG=4)  # groups of 32 channels: scales prefetched into L1 instead
sizes["fast-int4-g32"] = build(fast_kernel, consts, 1, 3)
general = dict(G=4, HEAD_DIM=80, BLOCK_D=128, FMT=4, NW=10, WP=16, K_MODE=2, K_GROUP=32,
               K_NG=1, K_TG=4, V_MODE=1, V_GROUP=32, V_NG=3, SCALE_MUL=1.0, BLOCK_M=16,
               BLOCK_N=128, CAUSAL=True, SPLIT=True, HAS_QUANT=True, HAS_RES=True,
               Q_NORM=True, F32=False)
sizes["general-kivi4"] = build(general_kernel, general, 8, 2)
for pdl in (True, False):  # a programmatic dependent launch on sm_90, a plain one before
    sizes[f"merge-pdl-{pdl}"] = build(
        merge_kernel, dict(HEAD_DIM=128, BLOCK_D=128, BLOCK_S=64, PDL=pdl), 4, 1)
print(json.dumps(sizes))
"""


@pytest.mark.slow
def test_kernels_compile_for_sm90_without_a_gpu():
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    run = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env,
                         timeout=600)  # fmt: skip
    if "ptxas" in run.stderr and "not found" in run.stderr.lower():
        pytest.skip("this triton has no bundled ptxas")
    assert run.returncode == 0, run.stderr[-3000:]
    sizes = json.loads(run.stdout.strip().splitlines()[-1])
    assert len(sizes) == 14 and all(size > 0 for size in sizes.values()), sizes
