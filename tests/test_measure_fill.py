"""How a decode trial fills its cache before the timed step: in as few calls as memory allows
(each new length is a new shape for cuDNN to plan or flex to compile), and in small enough
ones that a backend which materializes its scores never holds S^2 of them."""

import pytest
import torch

import sdpalab as sl
from sdpalab.run.trial import FILL_MAX_QUERIES, FILL_MAX_SCORES, fill_chunk


def test_fill_chunks_bound_scores_only_where_scores_are_made():
    q = torch.empty(8, 32, 1, 128, device="meta")
    prefix = 32767
    for backend in ("math", "eager", "auto"):  # auto may pick math
        chunk = fill_chunk(sl.Variant(backend=backend, kv_cache="static"), q, prefix)
        assert chunk == FILL_MAX_SCORES // (8 * 32 * prefix) == 16
    for backend in ("flash", "cudnn", "flex", "triton_qdecode"):
        chunk = fill_chunk(sl.Variant(backend=backend, kv_cache="static"), q, prefix)
        assert chunk == FILL_MAX_QUERIES // (8 * 32 * 128) == 2048  # 16 calls for 32k
    small = torch.empty(1, 4, 1, 64, device="meta")
    assert fill_chunk(sl.Variant(backend="flex", kv_cache="static"), small, 300) == 300
    assert fill_chunk(sl.Variant(backend="math", kv_cache="static"), small, 0) == 1


@pytest.mark.slow  # compiles flex
def test_a_trial_filled_in_long_chunks_still_matches_the_oracle():
    wl = sl.Workload(phase="decode", heads_q=8, heads_kv=2, seq_kv=700, head_dim=32)
    for var in (sl.Variant(backend="flash", kv_cache="sliding", kv_args={"window": 64}),
                sl.Variant(backend="flex", kv_cache="paged")):  # fmt: skip
        res = sl.measure(var, wl, sl.MeasureSettings(repeats=2, warmup=0, memory=False))
        assert res.status == "ok" and res.rel_fro_err <= res.tolerance, res.summary()
