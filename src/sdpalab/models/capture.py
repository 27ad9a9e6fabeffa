"""Captured activations: run a decoder on a text and record, at chosen layers, the post-RoPE
queries, keys and values its attention receives and the output it makes of them, into one trace
file (:mod:`sdpalab.spec.trace`) that a sweep can measure variants on.

    from sdpalab.models.capture import capture
    done = capture("smollm2", "smollm2.safetensors", layers=(0, 15, 29), tokens=1024)

The tensors are taken where transformers hands them to the attention function (after RoPE, K/V
heads not repeated, ``[B, H, S, D]``): a recording function registered in its
``AttentionInterface`` runs the stock ``sdpa`` attention with the model's own mask and keeps a
copy of its inputs and output, so no model code is patched and the model's output is unchanged.
Each layer's mask (causal, or the sliding window the layer passes) is recorded, and the capture
is checked before it is written: the float64 oracle of the recorded q, k, v under that mask
must reproduce the layer's recorded output within what the dtype allows
(:func:`sdpalab.measure.accuracy.tolerance`); a layer whose attention is not plain softmax
attention (soft-capping, sinks, a bias) is refused.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdpalab.attention.reference import attention_ref
from sdpalab.measure.accuracy import compare, tolerance
from sdpalab.models.attention import UNSUPPORTED_KWARGS
from sdpalab.models.loading import LoadedModel, load_model
from sdpalab.models.text import Corpus, load_text, token_stream
from sdpalab.spec import DTYPES, resolve_device
from sdpalab.spec.trace import PARTS, read_trace, write_trace

DEFAULT_TOKENS = 1024
CAPTURE_NAME = "sl:capture"
"""The attention implementation name the recording function is registered under."""
_CHECK_ROWS = 512  # query rows per float64 oracle block: [B, H, 512, S] scores at a time


@dataclass(frozen=True)
class Capture:
    """What :func:`capture` wrote: the trace file and its metadata (``meta["check"]`` holds each
    layer's relative error of the float64 oracle against the model's own output)."""

    path: Path
    meta: dict[str, Any]

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(self.meta["layers"])


def default_layers(num_layers: int) -> tuple[int, ...]:
    """A few layers spread over depth: the first, the middle and the last."""
    return tuple(sorted({0, num_layers // 2, num_layers - 1}))


def check_layers(layers, num_layers: int, model: str) -> tuple[int, ...]:
    """``layers`` sorted without repeats; ``ValueError`` naming the valid range for one that
    the model lacks."""
    for layer in layers:
        if isinstance(layer, bool) or not isinstance(layer, int) or not 0 <= layer < num_layers:
            raise ValueError(
                f"layer {layer!r} is out of range; valid: 0-{num_layers - 1} "
                f"({model} has {num_layers} layers)"
            )
    if not layers:
        raise ValueError(f"no layers given; valid: 0-{num_layers - 1}")
    return tuple(sorted(set(layers)))


class _Recorder:
    """The attention function of a capture: transformers' ``sdpa`` attention, plus a copy of
    its inputs and output at the chosen layers."""

    def __init__(self, layers: tuple[int, ...]) -> None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        self.inner = sdpa_attention_forward
        self.layers = set(layers)
        self.tensors: dict[int, dict[str, torch.Tensor]] = {}
        self.masks: dict[int, dict[str, Any]] = {}
        self.scaling: dict[int, float] = {}

    def __call__(self, module, query, key, value, attention_mask, **kwargs):
        out, weights = self.inner(module, query, key, value, attention_mask, **kwargs)
        layer = getattr(module, "layer_idx", None)
        if layer not in self.layers:
            return out, weights
        for arg in UNSUPPORTED_KWARGS:
            if kwargs.get(arg) is not None:
                raise ValueError(
                    f"layer {layer} passes {arg}= to its attention: its q, k, v alone cannot "
                    "reproduce its output, so it cannot be captured"
                )
        head_dim = query.shape[-1]
        scaling = kwargs.get("scaling")
        scaling = 1 / math.sqrt(head_dim) if scaling is None else float(scaling)
        # sdpalab and its oracle attend with 1/sqrt(D); another scale is folded into q
        if not math.isclose(scaling * math.sqrt(head_dim), 1.0):
            query = query * (scaling * math.sqrt(head_dim))
        window = kwargs.get("sliding_window") or getattr(module, "sliding_window", None)
        mask = {"mod": "sliding_window", "args": {"window": int(window)}} if window else None
        self.masks[layer] = mask or {"mod": "causal", "args": {}}
        self.scaling[layer] = scaling
        # out: [B, S, H_q, D] as the model goes on with it; the trace keeps [B, H_q, S, D]
        kept = {"q": query, "k": key, "v": value, "out": out.transpose(1, 2)}
        self.tensors[layer] = {p: kept[p].detach().to("cpu").contiguous().clone() for p in PARTS}
        return out, weights


def _token_ids(loaded: LoadedModel, corpus: Corpus, tokens: int) -> tuple[torch.Tensor, str]:
    """The first ``tokens`` tokens of ``corpus`` as ``[1, tokens]`` ids, and how they were made:
    the model's tokenizer, or (a model without one, such as tiny-llama) the text's UTF-8 bytes,
    taken modulo the vocabulary when it has fewer than 256 entries."""
    if loaded.tokenizer is not None:
        stream, how = token_stream(loaded.tokenizer, corpus), "the model's tokenizer"
    else:
        vocab = loaded.model.config.vocab_size
        raw = corpus.text.encode("utf-8")[: tokens * 2]
        stream, how = torch.tensor(list(raw), dtype=torch.long) % vocab, "utf-8 bytes"
    if len(stream) < tokens:
        raise ValueError(
            f"text {corpus.source!r} has {len(stream)} tokens, fewer than --tokens {tokens}; "
            "give fewer tokens or a longer text"
        )
    return stream[:tokens].unsqueeze(0), how


def oracle_error(parts: dict[str, torch.Tensor], mod: str, args: dict[str, Any]) -> float:
    """Relative Frobenius error of the float64 oracle of a layer's recorded ``q, k, v`` under
    ``mod`` against its recorded ``out`` (queries and keys at the same positions)."""
    q, k, v, out = (parts[p] for p in PARTS)
    seq = q.shape[2]
    blocks = [
        attention_ref(q[:, :, start : start + _CHECK_ROWS], k, v, mod, args, q_start=start)
        for start in range(0, seq, _CHECK_ROWS)
    ]
    return compare(out, torch.cat(blocks, dim=2)).rel_fro_err


def _record(model: torch.nn.Module, ids: torch.Tensor, layers: tuple[int, ...]) -> _Recorder:
    """One forward of ``model`` on ``ids`` ``[1, S]`` (no cache) through the recording
    attention; the recorder holds the chosen layers' tensors, masks and scales."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    recorder = _Recorder(layers)
    AttentionInterface.register(CAPTURE_NAME, recorder)
    # the stock sdpa mask: the recording function gets exactly what sdpa would
    AttentionMaskInterface.register(CAPTURE_NAME, ALL_MASK_ATTENTION_FUNCTIONS["sdpa"])
    model.set_attn_implementation(CAPTURE_NAME)
    with torch.inference_mode():
        model(input_ids=ids, use_cache=False)
    return recorder


def _checked(recorder: _Recorder, layer: int, dtype: str) -> float:
    """The oracle's error on one recorded layer (:func:`oracle_error`); ``ValueError`` when it
    exceeds what ``dtype`` allows: that layer's attention is more than its q, k, v and mask."""
    mask, parts = recorder.masks[layer], recorder.tensors[layer]
    error = oracle_error(parts, mask["mod"], mask["args"])
    limit = tolerance(DTYPES[dtype], kv_len=parts["k"].shape[2])
    if not error <= limit:
        raise ValueError(
            f"layer {layer}: the float64 oracle of its q, k, v under its mask {mask['mod']} "
            f"differs from its own output by {error:.2e} (limit {limit:.1e}); its attention is "
            "not plain softmax attention, so it cannot be captured"
        )
    return error


def _version() -> str:
    try:
        return importlib.metadata.version("sdpalab")
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def capture(
    model: str,
    out: str | Path,
    *,
    layers: tuple[int, ...] | list[int] | None = None,
    tokens: int = DEFAULT_TOKENS,
    text: str | Path | None = None,
    device: str = "auto",
    dtype: str = "float32",
    seed: int = 0,
    force: bool = False,
) -> Capture:
    """Run ``model`` (a built-in decoder or a local path) on the first ``tokens`` tokens of
    ``text`` (default: ``pydoc_data.topics``) and write the post-RoPE q, k, v and the attention
    output of ``layers`` (default :func:`default_layers`) to the trace file ``out``.

    Raises ``ValueError`` (one line) for an ``out`` that exists without ``force``, a layer the
    model lacks, a text too short or unreadable, an encoder, or a layer whose attention its
    q, k, v cannot reproduce; ``ImportError`` with the install command for a missing package.
    """
    out = Path(out).expanduser()
    if out.exists() and not force:
        raise ValueError(f"{str(out)!r} exists; pass --force to replace it")
    if isinstance(tokens, bool) or not isinstance(tokens, int) or tokens <= 0:
        raise ValueError(f"tokens={tokens!r} must be a positive integer")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not valid; choose one of: {', '.join(DTYPES)}")
    device = resolve_device(device)
    corpus = load_text(text)  # a bad text file fails before the model loads
    loaded = load_model(model, device=device, dtype=dtype, seed=seed)
    if loaded.kind != "decoder":
        raise ValueError(f"model {model!r} is an encoder; capture needs a decoder (causal LM)")
    config = loaded.model.config
    num_layers = config.num_hidden_layers
    layers = check_layers(
        default_layers(num_layers) if layers is None else layers, num_layers, model
    )
    most = getattr(config, "max_position_embeddings", None)
    if most and tokens > most:
        raise ValueError(f"tokens={tokens} is more than {model!r} takes; valid: 1-{most}")
    ids, tokenizer = _token_ids(loaded, corpus, tokens)

    recorder = _record(loaded.model, ids.to(device), layers)
    check = {str(layer): _checked(recorder, layer, dtype) for layer in layers}
    meta = {
        "model": model,
        "model_type": getattr(config, "model_type", None),
        "num_layers": num_layers,
        "tokens": tokens,
        "positions": [0, tokens],  # [first, end) of the queries' and keys' positions
        "dtype": dtype,
        "device": device,
        "seed": seed,
        "masks": {str(layer): recorder.masks[layer] for layer in layers},
        "scaling": {str(layer): recorder.scaling[layer] for layer in layers},
        "check": check,
        "text": {
            "source": corpus.source,
            "sha256": corpus.sha256,
            "tokenizer": tokenizer,
            "first_token": 0,
        },
        "sdpalab_version": _version(),
        "created_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    write_trace(out, recorder.tensors, meta)
    return Capture(out, read_trace(out).meta)
