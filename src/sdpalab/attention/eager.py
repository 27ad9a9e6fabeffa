"""Eager attention: matmul → softmax → matmul, the case study's hand-written core, made correct.

Materializes the full ``[B, H, q_len, kv_len]`` score matrix (that is its point: the O(S²)
baseline). GQA views the query heads as ``[B, H_kv, G, S, D]`` and broadcasts K/V; nothing is
repeated. Any mod works, non-additive ones included. Scores are modded and soft-maxed in float32
and the probabilities cast back to the input dtype, as transformers' eager attention does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from sdpalab.attention.mods import apply_dense, default_scale, make_mod


def make_eager(mod_name: str, mod_args: dict) -> Callable:
    def attend(q_BHSD, k_BHSD, v_BHSD):
        batch, heads_q, q_len, head_dim = q_BHSD.shape
        heads_kv, kv_len = k_BHSD.shape[1], k_BHSD.shape[2]
        group = heads_q // heads_kv
        q5 = q_BHSD.view(batch, heads_kv, group, q_len, head_dim)
        scores = torch.matmul(q5, k_BHSD.unsqueeze(2).transpose(-1, -2)) * default_scale(head_dim)
        scores = scores.view(batch, heads_q, q_len, kv_len).float()
        if mod_name != "none":
            mod = make_mod(
                mod_name,
                mod_args,
                q_len=q_len,
                kv_len=kv_len,
                heads=heads_q,
                device=str(q_BHSD.device),
            )
            scores = apply_dense(mod, scores)
        probs = torch.softmax(scores, dim=-1).to(q_BHSD.dtype)
        out = torch.matmul(probs.view(batch, heads_kv, group, q_len, kv_len), v_BHSD.unsqueeze(2))
        return out.view(batch, heads_q, q_len, head_dim)

    return attend
