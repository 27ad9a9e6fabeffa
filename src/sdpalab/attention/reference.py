"""The float64 oracle: plain attention, computed densely in float64 (on the inputs' device).

Grouped-query attention is handled by viewing the query heads as ``[B, H_kv, G, S, D]`` (query
head ``h`` uses KV head ``h // G``, as SDPA's ``enable_gqa`` does). Mods are applied densely;
causal masks align bottom-right when ``q_len < kv_len``. A query row that the mask leaves with
no key gets an output of zeros (FlexAttention's convention). :func:`attention_grads_ref` adds
autograd's float64 gradients, for training.
"""

from __future__ import annotations

import torch

from sdpalab.attention.mods import Mod, apply_dense, default_scale, make_mod


def _mod_at(
    mod: str | Mod,
    mod_args: dict | None,
    q_len: int,
    kv_len: int,
    heads: int,
    device,
    q_start: int | None,
) -> Mod:
    if not isinstance(mod, str):
        return mod
    start = kv_len - q_len if q_start is None else q_start
    # make_mod aligns by offset = kv_len - q_len; choose the length that gives this start.
    return make_mod(
        mod, mod_args or {}, q_len=kv_len - start, kv_len=kv_len, heads=heads, device=str(device)
    )


def _attend64(q, k, v, mod: Mod, scale: float) -> torch.Tensor:
    """Dense attention of float64 ``q [B, H_q, q_len, D]``, ``k, v [B, H_kv, kv_len, D]``
    (differentiable: autograd runs through it)."""
    batch, heads_q, q_len, head_dim = q.shape
    heads_kv, kv_len = k.shape[1], k.shape[2]
    if heads_q % heads_kv:
        raise ValueError(f"query heads {heads_q} must be a multiple of kv heads {heads_kv}")
    group = heads_q // heads_kv
    q5 = q.reshape(batch, heads_kv, group, q_len, head_dim)
    scores = torch.matmul(q5, k.unsqueeze(2).transpose(-1, -2)) * scale
    scores = apply_dense(mod, scores.reshape(batch, heads_q, q_len, kv_len))
    probs = torch.softmax(scores, dim=-1).nan_to_num(0.0)  # rows with no key → zeros
    out = torch.matmul(probs.view(batch, heads_kv, group, q_len, kv_len), v.unsqueeze(2))
    return out.reshape(batch, heads_q, q_len, head_dim)


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
    built = _mod_at(mod, mod_args, q.shape[2], k.shape[2], q.shape[1], q.device, q_start)
    scale = default_scale(q.shape[-1]) if scale is None else scale
    return _attend64(q, k, v, built, scale).cpu()


def attention_grads_ref(
    q_BHSD: torch.Tensor,
    k_BHSD: torch.Tensor,
    v_BHSD: torch.Tensor,
    grad_out_BHSD: torch.Tensor,
    mod: str = "none",
    mod_args: dict | None = None,
    *,
    block_rows: int | None = None,
) -> dict[str, torch.Tensor]:
    """The oracle's output and its float64 autograd gradients for the upstream gradient
    ``grad_out_BHSD`` (shaped like q): ``{"out", "dq", "dk", "dv"}`` and, for a mod that learns
    tensors (:attr:`Mod.params`), ``"d<name>"`` for each (``"dtable"``). All float64 on the CPU.

    Queries sit bottom-right (the last ``q_len`` positions). Rows are taken ``block_rows`` at a
    time (default all), so only one block's ``[B, H, block_rows, kv_len]`` scores live at once:
    each block's dq is its own, dk, dv and the params' gradients add up over the blocks.
    """
    q, k, v, dout = (x.detach().to(torch.float64) for x in (q_BHSD, k_BHSD, v_BHSD, grad_out_BHSD))
    _, heads_q, q_len, head_dim = q.shape
    kv_len = k.shape[2]
    k.requires_grad_(True)
    v.requires_grad_(True)
    scale = default_scale(head_dim)
    block_rows = q_len if block_rows is None else max(1, block_rows)
    leaves: dict[str, torch.Tensor] = {}
    outs, dqs = [], []
    for start in range(0, q_len, block_rows):
        rows = slice(start, min(q_len, start + block_rows))
        q_rows = q[:, :, rows].clone().requires_grad_(True)
        built = _mod_at(
            mod, mod_args, rows.stop - start, kv_len, heads_q, q.device, kv_len - q_len + start
        )
        if built.params:
            if not leaves:  # one float64 copy of each param, shared by every block
                leaves = {
                    name: p.detach().to(torch.float64).requires_grad_(True)
                    for name, p in built.params.items()
                }
            built = built.with_params(leaves)
        out = _attend64(q_rows, k, v, built, scale)
        out.backward(dout[:, :, rows])
        outs.append(out.detach())
        dqs.append(q_rows.grad)
    found = {"out": torch.cat(outs, dim=2), "dq": torch.cat(dqs, dim=2), "dk": k.grad, "dv": v.grad}
    found |= {f"d{name}": leaf.grad for name, leaf in leaves.items()}
    return {name: t.cpu() for name, t in found.items()}
