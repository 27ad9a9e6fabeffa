"""The float64 oracle: plain attention, computed densely in float64 (on the inputs' device).

Grouped-query attention is handled by viewing the query heads as ``[B, H_kv, G, S, D]`` (query
head ``h`` uses KV head ``h // G``, as SDPA's ``enable_gqa`` does). Mods are applied densely;
causal masks align bottom-right when ``q_len < kv_len``. A query row that the mask leaves with
no key gets an output of zeros (FlexAttention's convention).
"""

from __future__ import annotations

import torch

from sdpalab.attention.mods import Mod, apply_dense, default_scale, make_mod


def attention_ref(
    q_BHSD: torch.Tensor,
    k_BHSD: torch.Tensor,
    v_BHSD: torch.Tensor,
    mod: str | Mod = "none",
    mod_args: dict | None = None,
    scale: float | None = None,
    q_start: int | None = None,
) -> torch.Tensor:
    """Reference attention in float64. q ``[B, H_q, q_len, D]``, k/v ``[B, H_kv, kv_len, D]``.

    ``q_start`` is the sequence position of the first query row; by default the queries are
    the last ``q_len`` positions (bottom-right). Passing it lets a caller check a slice of the
    rows of a long sequence without building the whole score matrix.
    Computed in float64 on the inputs' device; returns ``[B, H_q, q_len, D]`` float64 on the CPU.
    """
    # float64 on the inputs' own device (a GPU's float64 is exact too, and far faster than
    # copying a long cache to the CPU); the result is returned on the CPU.
    q, k, v = (x.detach().to(torch.float64) for x in (q_BHSD, k_BHSD, v_BHSD))
    batch, heads_q, q_len, head_dim = q.shape
    heads_kv, kv_len = k.shape[1], k.shape[2]
    if heads_q % heads_kv:
        raise ValueError(f"query heads {heads_q} must be a multiple of kv heads {heads_kv}")
    if isinstance(mod, str):
        start = kv_len - q_len if q_start is None else q_start
        # make_mod aligns by offset = kv_len - q_len; choose the length that gives this start.
        mod = make_mod(
            mod,
            mod_args or {},
            q_len=kv_len - start,
            kv_len=kv_len,
            heads=heads_q,
            device=str(q.device),
        )
    scale = default_scale(head_dim) if scale is None else scale
    group = heads_q // heads_kv
    q5 = q.view(batch, heads_kv, group, q_len, head_dim)
    scores = torch.matmul(q5, k.unsqueeze(2).transpose(-1, -2)) * scale
    scores = apply_dense(mod, scores.reshape(batch, heads_q, q_len, kv_len))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key → zeros
    out = torch.matmul(probs.view(batch, heads_kv, group, q_len, kv_len), v.unsqueeze(2))
    return out.reshape(batch, heads_q, q_len, head_dim).cpu()
