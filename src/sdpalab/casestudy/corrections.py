"""What the case study measured wrongly, each shown by a measurement taken here and now.

Every function runs the case study's logic (from :mod:`sdpalab.casestudy.aspublished`) beside
sdpalab's, on random data on the present device, and returns a :class:`Correction` whose
``values`` hold the measured numbers and whose ``evidence`` says them in words.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.utils.benchmark as tbench
from torch import nn
from torch.autograd import DeviceType
from torch.profiler import profile

from sdpalab.attention.reference import attention_ref
from sdpalab.casestudy import aspublished as theirs
from sdpalab.measure.accuracy import compare
from sdpalab.measure.memory import peak_memory
from sdpalab.measure.profiler import activities
from sdpalab.spec import Variant, Workload


@dataclass
class Correction:
    """One thing the case study got wrong, and the measurement that shows it."""

    issue: str
    theirs: str
    correct: str
    evidence: str = ""
    values: dict[str, Any] = field(default_factory=dict)


def _mib(n: int) -> str:
    return f"{n:,} B ({n / 2**20:.2f} MiB)"


def time_reported_as_memory(call: Callable[[], Any], q: torch.Tensor, label: str) -> Correction:
    """Profile ``call`` three times as the case study did, and take its peak memory three times."""
    with torch.inference_mode():
        call()  # warm: a first call may compile
        times = [theirs.cpu_time_total_ms(theirs.their_profile(call, q)) for _ in range(3)]
        peaks = [peak_memory(call, device=str(q.device)).peak_mem_bytes for _ in range(3)]
    return Correction(
        '"Memory Profile" is a time',
        'printed the profiler\'s "Self CPU time total" (ms) under "Memory Profile"',
        "peak bytes of the call: CUDA allocator peak on a GPU, the CPU allocator's timeline "
        "(profile_memory=True) on a CPU (sl.measure.memory.peak_memory)",
        f'{label}, the same call 3 times: their "Memory Profile" '
        f"{', '.join(f'{t:.3f} ms' for t in times)} (a time that varies from run to run); "
        f"peak memory above inputs {', '.join(_mib(p) for p in peaks)}",
        {"cpu_total_ms": times, "peak_mem_bytes": peaks},
    )


def cuda_check(device: str) -> Correction:
    """Evaluate ``q.device == "cuda"`` and count the GPU events each profiler set-up records."""
    q = torch.randn(2, 4, 64, 32, device=device)
    expr = bool(q.device == "cuda")
    own_name = str(q.device)
    same_name = bool(q.device == own_name)  # not even the device's own name is equal
    literal = bool(torch.device("cuda") == "cuda")
    indexed = bool(torch.device("cuda:0") == "cuda")
    call = lambda: torch.nn.functional.scaled_dot_product_attention(q, q, q)  # noqa: E731
    call()
    counts = {}
    for who, acts in (("theirs", [theirs.their_activity(q)]), ("ours", activities(device))):
        with profile(activities=acts) as prof:
            call()
            if q.is_cuda:
                torch.cuda.synchronize(q.device)
        counts[who] = sum(1 for e in prof.events() if e.device_type == DeviceType.CUDA)
    ours = "+".join(a.name for a in activities(device))
    on_gpu = q.is_cuda
    evidence = (
        f'on a tensor on {q.device}: `q.device == "cuda"` → {expr}; '
        f'`q.device == "{own_name}"` → {same_name}; '
        f'`torch.device("cuda") == "cuda"` → {literal}; '
        f'`torch.device("cuda:0") == "cuda"` → {indexed}. '
        f"Their branch picks {theirs.their_activity(q).name}; sdpalab profiles {ours}. "
        f"GPU events recorded for one SDPA call: theirs {counts['theirs']}, ours {counts['ours']}"
        + (
            ""
            if on_gpu
            else " (no GPU here, so neither records GPU events: the comparisons "
            "above are what show that the check cannot fire on any device)"
        )
    )
    return Correction(
        "the CUDA check never fires",
        '`if self.q.device == "cuda"` to choose ProfilerActivity.CUDA',
        '`torch.device(d).type == "cuda"`, profiling CPU and CUDA together '
        "(sl.measure.profiler.activities)",
        evidence,
        {
            "expr": expr,
            "own_name": same_name,
            "literal": literal,
            "indexed": indexed,
            "gpu_events_theirs": counts["theirs"],
            "gpu_events_ours": counts["ours"],
        },
    )


def cached_decode(device: str, batch=2, heads=4, prefill=37, steps=8, head_dim=16):
    """Prefill then single-token steps through their ``CachedSDPA`` and sdpalab's dynamic cache,
    both against the float64 oracle of causal attention over the whole sequence.

    Returns the corrections for the top-left causal mask and for ``cur_len``.
    """
    from sdpalab.build import build

    total = prefill + steps
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(batch, heads, total, head_dim, generator=gen).to(device) for _ in range(3)
    )
    ref = attention_ref(q, k, v, "causal")
    wl = Workload(
        phase="decode",
        batch=batch,
        heads_q=heads,
        seq_kv=total,
        seq_q=1,
        head_dim=head_dim,
        device=device,
    )
    ours = build(Variant(backend="auto", kv_cache="dynamic"), wl)
    theirs_cache = theirs.CachedSDPA()
    flat = lambda x: x.reshape(batch * heads, x.shape[2], head_dim)  # noqa: E731  their layout
    cuts = [(0, prefill), *((t, t + 1) for t in range(prefill, total))]
    outs = {"theirs": [], "ours": []}
    cur_lens = []
    with torch.inference_mode():
        for lo, hi in cuts:
            sl = slice(lo, hi)
            got = theirs_cache(flat(q[:, :, sl]), flat(k[:, :, sl]), flat(v[:, :, sl]))
            outs["theirs"].append(got.reshape(batch, heads, hi - lo, head_dim))
            outs["ours"].append(ours(q[:, :, sl], k[:, :, sl], v[:, :, sl]))
            cur_lens.append((hi, theirs_cache.cur_len))
    err = {}
    for who, parts in outs.items():
        err[f"{who}_prefill"] = compare(parts[0], ref[:, :, :prefill]).max_abs_err
        err[f"{who}_decode"] = compare(torch.cat(parts[1:], dim=2), ref[:, :, prefill:]).max_abs_err
    mask = Correction(
        "top-left causal mask in the cache",
        "`is_causal=True` with 1 new query against the whole cache: SDPA aligns the mask "
        "top-left, so the new token sees only the first cached key",
        "bottom-right alignment (query i at position kv_len − q_len + i): sdpalab's dynamic "
        "cache, checked against the float64 oracle",
        f"prefill {prefill} tokens then {steps} single-token steps ([B={batch}, H={heads}, "
        f"D={head_dim}], random data), max abs error vs float64 causal attention: decode steps "
        f"theirs {err['theirs_decode']:.3g}, ours {err['ours_decode']:.2g}; prefill (square, "
        f"where top-left = bottom-right) theirs {err['theirs_prefill']:.2g}, "
        f"ours {err['ours_prefill']:.2g}",
        err,
    )
    length = Correction(
        "`cur_len` reads the wrong dimension",
        "`self.cur_len = k.shape[2]` on `[heads, seq_len, head_dim]`",
        "the length is dimension 1 in that layout (dimension 2 of `[B, H, S, D]`)",
        "cached length → their cur_len: "
        + ", ".join(f"{real} → {stored}" for real, stored in (cur_lens[0], cur_lens[-1]))
        + f" (it always stores head_dim = {head_dim})",
        {"real": [r for r, _ in cur_lens], "stored": [s for _, s in cur_lens]},
    )
    return mask, length


def stateful_benchmark(device: str, seq_len: int = 4, hidden: int = 16, number: int = 100):
    """Their profile() then benchmark() on one ``CachedSDPA``, as the KV experiment ran them."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(seq_len, hidden, hidden, generator=gen).to(device) for _ in range(3))
    m = theirs.CachedSDPA()
    with torch.inference_mode():
        theirs.their_profile(lambda: m(q, k, v), q)
        tbench.Timer(stmt="M(Q, K, V)", globals={"M": m, "Q": q, "K": k, "V": v}).timeit(number)
    calls = m.cache_k.shape[1] // hidden
    return Correction(
        "a stateful module benchmarked without a reset",
        "profile() then benchmark().timeit(100) on one CachedSDPA, never calling reset_cache()",
        "roll the cache back before every timed call, so each sample does the same work "
        "(sl.measure's setup hook)",
        f"(seq_len={seq_len}, hidden={hidden}): after profile() and timeit({number}) the cache "
        f"holds {m.cache_k.shape[1]} tokens ({calls} calls × {hidden}): the published "
        f'"Benchmark Profile" averaged calls whose cache grew from {2 * hidden} to '
        f"{m.cache_k.shape[1]} keys",
        {"cache_tokens": m.cache_k.shape[1], "calls": calls, "hidden": hidden},
    )


def _bytes(t: torch.Tensor) -> int:
    """Storage bytes of a tensor, summing the inner tensors of a tensor subclass (torchao)."""
    if type(t) in (torch.Tensor, nn.Parameter) or not hasattr(t, "__tensor_flatten__"):
        return t.numel() * t.element_size()
    names, _ = t.__tensor_flatten__()
    return sum(_bytes(getattr(t, name)) for name in names)


def _weights(module: nn.Module) -> tuple[int, int, int]:
    """(Linear layers, weights held as quantized tensors, bytes of all Linear weights)."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    quantized = sum(1 for m in linears if type(m.weight) not in (torch.Tensor, nn.Parameter))
    return len(linears), quantized, sum(_bytes(m.weight) for m in linears)


def phantom_quantization(device: str, hidden: int) -> Correction:
    """Quantize their ``SmolAttention`` as they did, and sdpalab's projections with torchao."""
    from sdpalab.build import build

    linears = sum(1 for m in theirs.SmolAttention().modules() if isinstance(m, nn.Linear))
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated
            m_q = torch.ao.quantization.quantize_dynamic(
                theirs.SmolAttention(), {nn.Linear}, dtype=torch.qint8
            )
        dynamic = sum(1 for m in m_q.modules() if "quantized" in type(m).__module__)
        params = sum(p.numel() for p in m_q.parameters())
        ao = (
            f"torch.ao.quantization.quantize_dynamic ran: {dynamic} quantized modules, "
            f"{params} parameters before and after"
        )
    except (ImportError, AttributeError, RuntimeError) as err:
        dynamic, ao = None, f"torch.ao.quantization.quantize_dynamic is unavailable here ({err})"
    wl = Workload(
        phase="prefill", batch=1, heads_q=1, seq_kv=hidden, head_dim=hidden, device=device
    )
    ours = {}
    for quant in ("none", "int8_weight_only", "int8_dynamic"):
        try:
            ours[quant] = _weights(
                build(Variant(backend="auto", projections=True, weight_quant=quant), wl)
            )
        except Exception as err:  # an unsupported torchao config here is a data point
            ours[quant] = (None, None, None, f"{type(err).__name__}: {err}")
    base = ours["none"][2]
    parts = [
        f"{q}: {n[1]}/{n[0]} weights quantized, {_mib(n[2])}"
        if n[0] is not None
        else f"{q}: {n[3]}"
        for q, n in ours.items()
    ]
    return Correction(
        "quantized projections that did not exist",
        "quantize_dynamic(SmolAttention, {nn.Linear}) on a module with no Linear",
        "q/k/v/o Linear projections around the attention, quantized with torchao quantize_ "
        "(ProjectedAttention)",
        f"their SmolAttention: {linears} Linear layers; {ao}. sdpalab's projections "
        f"(hidden {hidden}), Linear weight bytes: "
        + "; ".join(parts)
        + f" (float32 {_mib(base)} before)",
        {
            "their_linears": linears,
            "their_quantized_modules": dynamic,
            **{f"ours_{q}": list(n[:3]) for q, n in ours.items()},
        },
    )


def missing_scale(device: str, batch=2, heads=4, seq=64, head_dim=64) -> Correction:
    """The notebook's attention core without ``1/sqrt(d)`` (and with its implicit softmax dim)
    against the float64 oracle, beside SDPA."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, heads, seq, head_dim, generator=gen).to(device) for _ in range(3))
    ref = attention_ref(q, k, v)
    flat = [x.reshape(batch * heads, seq, head_dim) for x in (q, k, v)]
    shape = (batch, heads, seq, head_dim)
    with torch.inference_mode():
        unscaled = theirs.unscaled_attention(*flat).reshape(shape)
        implicit = theirs.unscaled_attention(*flat, softmax_dim=0).reshape(shape)
        sdpa = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    errs = {
        name: compare(out, ref)
        for name, out in (
            ("unscaled", unscaled),
            ("unscaled_softmax_dim0", implicit),
            ("sdpa", sdpa),
        )
    }
    text = "; ".join(
        f"{n}: max abs {a.max_abs_err:.3g}, rel {a.rel_fro_err:.3g}" for n, a in errs.items()
    )
    return Correction(
        "the notebook's missing 1/sqrt(d) scale",
        "`softmax(q @ k.T) @ v` (and `F.softmax(out)` with no dim: dim 0 for a 3-D tensor)",
        "scores scaled by 1/sqrt(head_dim), softmax over the keys; checked against float64",
        f"[B={batch}, H={heads}, S={seq}, D={head_dim}] random, vs float64 oracle: {text}",
        {f"{n}_max_abs": a.max_abs_err for n, a in errs.items()},
    )


def uncompiled_flex(device: str, quick: bool = False) -> Correction:
    """Peak memory of ``flex_attention`` called uncompiled (the case study compiled only its
    ``no_op``) against sdpalab's compiled flex.

    The case study's own shapes have ``S = D``, where a score matrix is no bigger than one
    input and the difference hides among the other buffers; a longer sequence shows it.
    """
    import warnings

    from torch.nn.attention.flex_attention import flex_attention

    from sdpalab.attention.backends import make_attend

    heads, seq = (4, 1024) if quick else (8, 2048)
    wl = Workload(phase="prefill", batch=1, heads_q=heads, seq_kv=seq, head_dim=64, device=device)
    gen = torch.Generator().manual_seed(0)
    q, k, v = (
        torch.randn(wl.batch, wl.heads_q, wl.seq_kv, wl.head_dim, generator=gen).to(wl.device)
        for _ in range(3)
    )

    def no_op(score, b, h, q_idx, kv_idx):
        return score

    compiled = make_attend("flex", "none", {})
    scores = wl.batch * wl.heads_q * wl.seq_q * wl.seq_kv * 4
    peaks = {}
    with torch.inference_mode(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "flex_attention called without torch.compile()"
        for name, fn in (
            ("uncompiled", lambda: flex_attention(q, k, v, score_mod=no_op)),
            ("compiled", lambda: compiled(q, k, v)),
        ):
            peaks[name] = peak_memory(fn, device=wl.device, warmup=1).peak_mem_bytes
    return Correction(
        "FlexAttention ran uncompiled",
        "`@torch.compile` on the score_mod `no_op` only; `flex_attention` itself called eagerly "
        "(torch warns that this materializes the full score matrix)",
        "`torch.compile(flex_attention)` (sdpalab compiles it once per process)",
        f"[B={wl.batch}, H={wl.heads_q}, S={wl.seq_kv}, D={wl.head_dim}], peak memory above "
        f"inputs: uncompiled {_mib(peaks['uncompiled'])}, compiled {_mib(peaks['compiled'])} "
        f"(one float32 score matrix: {_mib(scores)})",
        {
            "uncompiled_peak_bytes": peaks["uncompiled"],
            "compiled_peak_bytes": peaks["compiled"],
            "score_matrix_bytes": scores,
        },
    )
