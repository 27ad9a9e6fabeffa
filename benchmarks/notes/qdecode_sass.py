"""Count the instructions of the fast kernel's loops, compiled for sm_90 without a GPU.

    TRITON_INTERPRET=0 PYTHONPATH=src python3 benchmarks/notes/qdecode_sass.py int4 kivi4 kivi2

For each configuration: registers and stack (``cuobjdump -res-usage``), then each loop of the
SASS (the body between a backward branch and its target) with its length and its most frequent
opcodes. A loop's length over the keys of its block is the kernel's instructions per key, the
count ``qdecode-kernel.md`` compares formats by. The numbers depend on the Triton that compiles
(the GPU image runs 3.6: ``pip install --target DIR triton==3.6.0`` and put DIR first on
PYTHONPATH to count what the H100 runs).
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from sdpalab.attention.kernels.qdecode.fast import fast_kernel

BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
POINTERS = {"Q": "*bf16", "Out": "*bf16", "Part": "*fp32", "Lse": "*fp32", "KW": "*i32",
            "KS": "*fp16", "KZ": "*fp16", "VW": "*i32", "VS": "*fp16", "VZ": "*fp16",
            "KR": "*bf16", "VR": "*bf16"}  # fmt: skip
# name: (FMT id, codes a word, channel groups of the values, block_n, warps, stages, BULK_L2)
CASES = {
    "int8": (1, 4, 1, 128, 2, 2, False),
    "int4": (3, 8, 2, 64, 1, 3, True),
    "int4g32": (3, 8, 4, 64, 1, 3, True),
    "kivi4": (4, 8, 4, 32, 1, 3, False),
    "kivi2": (5, 8, 4, 32, 1, 3, False),
    "kivi4b64": (4, 8, 4, 64, 1, 3, False),
}


def sass(fid, e, ng, block_n, warps, stages, bulk) -> tuple[str, str]:
    consts = dict(G=4, HEAD_DIM=128, FMT=fid, E=e, WP=128 // e, NG=ng,
                  OFF=128.0 if fid == 1 else 0.0, UNIT_INV=2.0**24, R=4, BLOCK_N=block_n,
                  CAUSAL=True, SPLIT=True, PREFETCH=True, PDL=True, BULK_L2=bulk,
                  FUSED_MERGE=False)  # fmt: skip
    sig = {a: "constexpr" if a in consts else POINTERS.get(a, "i32") for a in fast_kernel.arg_names}
    sig["qk_scale"] = "fp32"
    out = triton.compile(ASTSource(fn=fast_kernel, signature=sig, constexprs=consts),
                         target=GPUTarget("cuda", 90, 32),
                         options={"num_warps": warps, "num_stages": stages})  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        with open(cubin, "wb") as f:
            f.write(out.asm["cubin"])
        run = [os.path.join(BIN, "cuobjdump"), cubin]
        code = subprocess.run([*run[:1], "-sass", cubin], capture_output=True, text=True).stdout
        res = subprocess.run([*run[:1], "-res-usage", cubin], capture_output=True, text=True)
    return code, res.stdout.strip().splitlines()[-1].strip()


def loops(code: str) -> list[tuple[int, collections.Counter]]:
    """(length, opcode counts) of each loop body of at least 60 instructions."""
    ins = [(int(m[1], 16), m[2].strip())
           for m in re.finditer(r"/\*([0-9a-f]{4,6})\*/\s+(.*?);", code)]  # fmt: skip
    where = {addr: i for i, (addr, _) in enumerate(ins)}
    found = []
    for i, (addr, text) in enumerate(ins):
        target = re.search(r"BRA\s+.*?0x([0-9a-f]+)", text)
        if target and int(target[1], 16) < addr and int(target[1], 16) in where:
            body = [t for _, t in ins[where[int(target[1], 16)] : i + 1]]
            ops = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0].split(".")[0]
                                      for t in body)  # fmt: skip
            if len(body) >= 60:
                found.append((len(body), ops))
    return found


def main() -> None:
    for name in sys.argv[1:] or list(CASES):
        code, res = sass(*CASES[name])
        block_n = CASES[name][3]
        print(f"{name}: {res}")
        for length, ops in loops(code):
            top = ", ".join(f"{op} {n}" for op, n in ops.most_common(10))
            print(f"  loop {length} ({length / block_n:.1f} a key): {top}")


if __name__ == "__main__":
    main()
