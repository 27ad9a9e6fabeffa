"""Check sdpalab.measure on a CUDA GPU against known quantities; prints a markdown report.

    PYTHONPATH=src python benchmarks/notes/measure_gpu_check.py > $OUT/measure-gpu.md

Each section states what it expects; the numbers below it are what this machine measured.
"""

from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.profiler import ProfilerActivity, profile

from sdpalab.analysis import PerformanceAnalysis
from sdpalab.attention.backends import make_attend
from sdpalab.attention.reference import attention_ref
from sdpalab.measure import (
    compare,
    kernels_ran,
    measure_ceilings,
    peak_memory,
    provenance,
    time_fn,
    tolerance,
)

DEV = "cuda"
MiB = 2**20
BACKENDS = {
    "math": SDPBackend.MATH,
    "flash": SDPBackend.FLASH_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
}


def pinned(backend, q, k, v):
    def fn():
        with sdpa_kernel([BACKENDS[backend]]):
            return F.scaled_dot_product_attention(q, k, v)

    return fn


def section(title: str, expect: str) -> None:
    print(f"\n## {title}\n\nExpected: {expect}\n")


def main() -> None:
    t0 = time.perf_counter()
    prov = provenance(DEV)
    prov_s = time.perf_counter() - t0
    print("# sdpalab.measure on a GPU\n")
    command = "PYTHONPATH=src python benchmarks/notes/measure_gpu_check.py"
    print(f"Command: `{command}`, {prov['time_utc']}\n")
    print("```json\n" + json.dumps(prov, indent=1) + "\n```")
    print(f"\nprovenance('cuda') took {prov_s * 1e3:.0f} ms (first call in the process).")

    section(
        "timing",
        "a 10M-cycle `torch.cuda._sleep` reads several ms; a flushed L2 slows a "
        "read of an L2-resident buffer",
    )
    t = time_fn(lambda: torch.cuda._sleep(10_000_000), device=DEV, warmup=1, repeats=5)
    print(
        f"- sleep 10M cycles: {t.latency_ms:.3f} ms (IQR {t.latency_iqr_ms:.4f}, n={t.latency_n})"
    )
    l2 = torch.cuda.get_device_properties(0).L2_cache_size
    x = torch.ones(l2 // 2 // 4, device=DEV)  # half of L2, float32

    def busy() -> None:  # keeps the GPU busy so the host's launch time is not in the span
        torch.cuda._sleep(200_000)

    bare = time_fn(lambda: x.sum(), device=DEV, repeats=50)
    warm = time_fn(lambda: x.sum(), device=DEV, repeats=50, setup=busy)
    cold = time_fn(lambda: x.sum(), device=DEV, repeats=50, setup=busy, flush_l2=True)
    print(
        f"- L2 = {l2 / MiB:.0f} MiB; sum of a {x.numel() * 4 / MiB:.1f} MiB buffer: "
        f"{bare.latency_ms * 1e3:.1f} us on an idle GPU (host launch time included), "
        f"{warm.latency_ms * 1e3:.1f} us on a busy GPU (L2 warm), "
        f"{cold.latency_ms * 1e3:.1f} us busy with flush_l2 (L2 cold)"
    )

    section(
        "peak memory (CUDA allocator)",
        "64 MiB for a 64 MiB tensor; math SDPA at least "
        "B*H*S*S*2 bytes (bf16 scores) above the inputs, fused kernels far less",
    )
    p = peak_memory(lambda: torch.empty(64 * MiB, dtype=torch.uint8, device=DEV), device=DEV)
    print(f"- 64 MiB tensor: {p.peak_mem_bytes / MiB:.3f} MiB ({p.method})")
    B, H, S, D = 1, 8, 4096, 64
    q, k, v = (torch.randn(B, H, S, D, device=DEV, dtype=torch.bfloat16) for _ in range(3))
    print(f"- B={B} H={H} S={S} D={D} bf16; B*H*S*S*2 = {B * H * S * S * 2 / MiB:.0f} MiB")
    for name in BACKENDS:
        try:
            fn = pinned(name, q, k, v)
            fn()
            m = peak_memory(fn, device=DEV)
            print(
                f"  - {name}: +{m.peak_mem_bytes / MiB:.1f} MiB, total "
                f"{m.peak_mem_total_bytes / MiB:.1f} MiB; kernels_ran = "
                f"{kernels_ran(fn, device=DEV)}"
            )
        except RuntimeError as err:
            print(f"  - {name}: unavailable ({str(err).splitlines()[0]})")
    auto = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
    print(f"  - auto: kernels_ran = {kernels_ran(auto, device=DEV)}")
    eager = lambda: torch.softmax(q @ k.transpose(-1, -2), -1) @ v  # noqa: E731
    print(f"  - eager matmul/softmax: kernels_ran = {kernels_ran(eager, device=DEV)}")

    section("compiled flex on CUDA: op and kernel names", "whether any name identifies flex")
    flex = make_attend("flex", "causal", {})
    qs, ks, vs = (t[:, :, :1024] for t in (q, k, v))
    flex(qs, ks, vs)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        flex(qs, ks, vs)
        torch.cuda.synchronize()
    names = sorted({e.name for e in prof.events()})
    print("- names: " + ", ".join(f"`{n}`" for n in names))
    print(f"- kernels_ran: {kernels_ran(lambda: flex(qs, ks, vs), device=DEV)}")

    section("accuracy vs the float64 oracle", "every rel. Frobenius error below tolerance(dtype)")
    print("| dtype | tolerance | " + " | ".join([*BACKENDS, "eager", "flex"]) + " |")
    print("|---|---|" + "---|" * (len(BACKENDS) + 2))
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        shapes = ((2, 8, 1000, 80), (2, 2, 1000, 80), (2, 2, 1000, 80))
        qa, ka, va = (torch.randn(s).to(DEV, dtype) for s in shapes)
        ref = attention_ref(qa, ka, va, "causal")
        cells = []
        for name in [*BACKENDS, "eager", "flex"]:
            try:
                out = make_attend(name, "causal", {})(qa, ka, va)
                cells.append(f"{compare(out, ref).rel_fro_err:.2e}")
            except Exception as err:
                cells.append(f"n/a ({type(err).__name__})")
        print(f"| {str(dtype)[6:]} | {tolerance(dtype):.1e} | " + " | ".join(cells) + " |")

    section("ceilings", "matmul near the bf16 dense peak, copy near HBM bandwidth")
    t0 = time.perf_counter()
    c = measure_ceilings(DEV)
    print(f"- {c} ({time.perf_counter() - t0:.1f} s)")

    section("PerformanceAnalysis.report() on CUDA", "CUDA self time in the table, allocator peak")

    def flash_attention(q, k, v):
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v)

    print("```\n" + PerformanceAnalysis(flash_attention, (q, k, v)).report(n=8) + "\n```")


if __name__ == "__main__":
    main()
