"""The case study's published figures, transcribed from its Results section.

Source: the blog post "SDPA Optimization Case Study - A Worklog", whose scripts and notebook are
public at https://github.com/yash-srivastava19/sdpa_optimization.
Every figure is a time. ``memory_profile`` is what the case study printed under "Memory
Profile: CPU Total Time" (the profiler table's "Self CPU time total" footer, a CPU time that
it read as memory); ``benchmark`` is its "Benchmark Profile" (``torch.utils.benchmark``'s mean).
Values are kept as the strings it printed, units included, and converted with :func:`to_ms`.
"""

from __future__ import annotations

from dataclasses import dataclass

SOURCE = "https://github.com/yash-srivastava19/sdpa_optimization"
"""The case study's public repository: the scripts and notebook of its blog post."""


@dataclass(frozen=True)
class Published:
    """One published result. ``params`` are the case study's own names for its sizes."""

    experiment: str
    params: tuple[tuple[str, int], ...]
    memory_profile: str
    """Printed as "Memory Profile: CPU Total Time" (a time)."""
    benchmark: str
    """Printed as "Benchmark Profile"."""
    arm: str = ""
    """``non-quantized`` / ``quantized`` in the quantization experiment."""


def to_ms(text: str) -> float:
    """``"338.52 ms"`` → 338.52; ``"243.24 us"`` → 0.24324."""
    value, unit = text.split()
    return float(value) * {"ms": 1.0, "us": 1e-3, "s": 1e3}[unit]


def _kv(seq_len, hidden, mem, bench):
    return Published("kv_cache", (("seq_len", seq_len), ("hidden", hidden)), mem, bench)


def _quant(seq_len, hidden, arm, mem, bench):
    return Published("quantization", (("seq_len", seq_len), ("hidden", hidden)), mem, bench, arm)


def _flex(batch, seq_len, hidden, mem, bench):
    params = (("batch", batch), ("seq_len", seq_len), ("hidden", hidden))
    return Published("flex", params, mem, bench)


PUBLISHED: tuple[Published, ...] = (
    _kv(4, 16, "338.52 ms", "504.01 ms"),
    _kv(8, 32, "16.041 ms", "567.59 ms"),
    _kv(10, 64, "4.388 ms", "1.60 ms"),
    _kv(12, 128, "338.52 ms", "4.96 ms"),
    _quant(4, 16, "non-quantized", "7.047 ms", "243.24 us"),
    _quant(4, 16, "quantized", "15.533 ms", "442.75 us"),
    _quant(8, 32, "non-quantized", "1.083 ms", "347.22 us"),
    _quant(8, 32, "quantized", "1.266 ms", "552.11 us"),
    _quant(10, 64, "non-quantized", "4.650 ms", "664.73 us"),
    _quant(10, 64, "quantized", "1.469 ms", "901.69 us"),
    _quant(12, 128, "non-quantized", "4.650 ms", "664.73 us"),
    _quant(12, 128, "quantized", "4.222 ms", "2.90 ms"),
    # The first result is headed "Batch Size - 4"; the experiment's code loops over
    # batch_sizes = [8, 16, 32]. We run the code's 8 and keep the printed 4 in the note.
    _flex(8, 8, 64, "516.692 ms", "8.45 ms"),
    _flex(16, 16, 128, "348.271 ms", "9.60 ms"),
    _flex(32, 32, 256, "180.934 ms", "48.30 ms"),
)

NOTES: tuple[str, ...] = (
    "Every published figure is a time; the column the case study called memory is the "
    'profiler\'s "Self CPU time total".',
    "KV cache: the results for (4, 16) and (12, 128) print the same 338.52 ms.",
    "Quantization: the non-quantized results for (10, 64) and (12, 128) are identical "
    "(4.650 ms, 664.73 us), a likely copy-paste.",
    'FlexAttention: the first result is headed "Batch Size - 4" but the experiment\'s code '
    "runs batch_sizes = [8, 16, 32]; we run 8.",
    'All published runs say "Number Threads - 2"; the KV cache and FlexAttention code put '
    'the tensors on "cuda", the quantization code on "cpu".',
)


def published_for(experiment: str, arm: str = "", **params: int) -> Published | None:
    """The published result of one experiment at the given sizes, if there is one."""
    for row in PUBLISHED:
        if row.experiment == experiment and row.arm == arm and dict(row.params) == params:
            return row
    return None
