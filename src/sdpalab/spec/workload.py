"""What the user means: an attention :class:`Workload` (one call's shape), a
:class:`ModelWorkload` (a whole model on a text) or a :class:`TraceWorkload` (one layer's real
queries, keys and values, captured from a model). Frozen and validated on construction: a bad
value raises ``ValueError`` naming the field, the value and the valid choices.

Each field says its role in its metadata, and everything downstream derives from it: the YAML
axes, the context that tells two workloads apart, the sizes along which cost only grows. A
field may also name the key a config gives it by (``layers``: the axis of ``layer``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch

from sdpalab.attention.mods import validate_mod
from sdpalab.spec.trace import TraceInfo, read_trace

PHASES = ("prefill", "decode", "train")
"""``train`` is a prefill-shaped call run forward and backward (:mod:`sdpalab.run.trial`)."""
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
BUILTIN_MODELS = ("smollm2", "minilm", "tiny-llama")
"""Models that need no download (see :mod:`sdpalab.models`)."""

KIND, SIZE, CHOICE, PLACE = "kind", "size", "choice", "place"
"""Field roles: what the work is, how big it is, a free choice (dtype), where it runs."""


def _role(role: str, default: Any = dataclasses.MISSING, doc: str = "", key: str = "") -> Any:
    metadata = {"role": role, "doc": doc, **({"key": key} if key else {})}
    return field(default=default, metadata=metadata)


def check_choice(name: str, value: Any, valid) -> None:
    if value not in valid:
        raise ValueError(f"{name}={value!r} is not valid; choose one of: {', '.join(valid)}")


def check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer")


def resolve_device(device: str) -> str:
    """``auto`` → ``cuda`` when a GPU is visible, else ``cpu``; checks the device exists."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(
            f"device={device!r} is not valid; choose auto, cpu, cuda or cuda:N"
        ) from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={device!r} is not available here (no CUDA); choose cpu or auto"
            )
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device={device!r} does not exist; this machine has "
                f"{torch.cuda.device_count()} CUDA device(s)"
            )
    elif dev.type != "cpu":
        raise ValueError(f"device={device!r} is not supported; choose auto, cpu, cuda or cuda:N")
    return device


def supported_dtypes(device: str) -> tuple[str, ...]:
    """Compute dtypes this device can run attention in."""
    if torch.device(device).type == "cuda" and not torch.cuda.is_bf16_supported():
        return ("float32", "float16")
    return tuple(DTYPES)


def _check_dtype_device(spec: Any) -> None:
    check_choice("dtype", spec.dtype, tuple(DTYPES))
    object.__setattr__(spec, "device", resolve_device(spec.device))
    if spec.dtype not in supported_dtypes(spec.device):
        raise ValueError(
            f"dtype={spec.dtype!r} is not supported on {spec.device}; "
            f"choose one of: {', '.join(supported_dtypes(spec.device))}"
        )


@dataclass(frozen=True, kw_only=True)
class Workload:
    """One attention call's shape. Tensors are ``[B, H, S, D]``.

    For ``decode``, ``seq_kv`` is the context already cached and ``seq_q`` the tokens of one
    step (default 1); causal masks align bottom-right (query i sits at position
    ``seq_kv - seq_q + i``). ``train`` is shaped like ``prefill`` and runs the call forward and
    backward (``out.backward(grad)`` with a seeded upstream gradient), without a KV cache.

    ``mod`` names the attention the work means (``causal``, ``sliding_window`` with
    ``mod_args``): every variant's error is measured against that mask's oracle, so a variant
    computing another mask is an approximation whose error shows. Left ``None``, each variant
    is measured against its own mask.
    """

    phase: str = _role(
        KIND,
        "prefill",
        "prefill (a whole sequence), decode (cached steps) or train (forward and backward)",
    )
    mod: str | None = _role(
        KIND, None, "the attention it means: a mask or bias (None: each variant's own)"
    )
    mod_args: dict[str, Any] = field(
        default_factory=dict, metadata={"role": KIND, "doc": "the arguments of mod"}
    )
    batch: int = _role(SIZE, 1)
    heads_q: int = _role(SIZE, 8, "query heads; a multiple of heads_kv")
    heads_kv: int | None = _role(SIZE, None, "key/value heads; default heads_q")
    seq_q: int | None = _role(
        SIZE, None, "query length; default seq_kv (prefill, train) or 1 (decode)"
    )
    seq_kv: int = _role(SIZE, 1024, "key/value length, this step's tokens included")
    head_dim: int = _role(SIZE, 64)
    dtype: str = _role(CHOICE, "float32")
    device: str = _role(PLACE, "cpu")

    def __post_init__(self) -> None:
        check_choice("phase", self.phase, PHASES)
        for name in ("batch", "heads_q", "seq_kv", "head_dim"):
            check_positive_int(name, getattr(self, name))
        if self.heads_kv is None:
            object.__setattr__(self, "heads_kv", self.heads_q)
        if self.seq_q is None:
            object.__setattr__(self, "seq_q", 1 if self.phase == "decode" else self.seq_kv)
        for name in ("heads_kv", "seq_q"):
            check_positive_int(name, getattr(self, name))
        if self.heads_q % self.heads_kv:
            raise ValueError(
                f"heads_q={self.heads_q} must be a multiple of heads_kv={self.heads_kv}"
            )
        if self.seq_q > self.seq_kv:
            raise ValueError(f"seq_q={self.seq_q} must be at most seq_kv={self.seq_kv}")
        if not isinstance(self.mod_args, dict):
            raise ValueError(f"mod_args={self.mod_args!r} must be a mapping of parameter to value")
        if self.mod is not None:
            validate_mod(self.mod, self.mod_args)
        elif self.mod_args:
            raise ValueError(f"mod_args={self.mod_args!r} needs a mod: name the mask they set")
        _check_dtype_device(self)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.heads_q // self.heads_kv

    def to_dict(self) -> dict[str, Any]:
        """The fields; without ``mod`` and ``mod_args`` when no mask is named, so such a
        workload keeps the dict (and the trial ids) it had before workloads named masks."""
        out = dataclasses.asdict(self)
        if self.mod is None:
            del out["mod"], out["mod_args"]
        return out


@dataclass(frozen=True, kw_only=True)
class ModelWorkload:
    """A whole model as the workload: ``model`` (a built-in name or a local path) reads
    ``batch`` windows of ``text``, each ``prompt_len + new_tokens`` tokens, in ``dtype``: the
    first ``prompt_len`` tokens of every window are prefilled into the variant's cache, the
    other ``new_tokens`` fed one decode step at a time through it (teacher-forced), and each
    step's next-token distribution is scored against the stock model's on the same tokens
    (see :mod:`sdpalab.run.model_trial`). A model without a tokenizer (``tiny-llama``) reads
    seeded random tokens instead; an encoder runs one forward of ``[batch, prompt_len]``.
    """

    model: str = _role(KIND, doc="a built-in model name or a local path")
    text: str | None = _role(KIND, None, "a UTF-8 text file to score; None: pydoc_data.topics")
    # The context is prompt_len and the scored tokens new_tokens, not fields of their own: a
    # decode step is the same forward whether its token was sampled or read from a text, so one
    # teacher-forced pass gives the decode latency, the cache bytes and the quality together,
    # at the sizes a sweep already varies (and batch windows of the text are batch sequences).
    prompt_len: int = _role(SIZE, 128, "tokens prefilled into the cache (the context)")
    new_tokens: int = _role(SIZE, 32, "tokens decoded after it, one a step, each one scored")
    batch: int = _role(SIZE, 1, "sequences decoded at once: windows spread over the text")
    dtype: str = _role(CHOICE, "float32")
    device: str = _role(PLACE, "cpu")

    def __post_init__(self) -> None:
        for name in ("prompt_len", "new_tokens", "batch"):
            check_positive_int(name, getattr(self, name))
        if self.text is not None and (not isinstance(self.text, str) or not self.text.strip()):
            raise ValueError(f"text={self.text!r} must be the path of a text file, or None")
        _check_dtype_device(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, kw_only=True)
class TraceWorkload:
    """Real attention inputs as the workload: layer ``layer`` of a trace file that ``sdpalab
    capture`` wrote (:mod:`sdpalab.spec.trace`), its tensors cast to ``dtype`` on ``device``.

    ``prefill`` attends every captured query to the keys; ``decode`` the last query to all of
    them (one step after a cached context); ``train`` runs the prefill call forward and
    backward. The mask is the model's own for that layer (causal, or its sliding window), as
    the trace records it: the float64 oracle applies it, and a
    variant whose mod is ``none`` runs it. The sizes come from the file (:meth:`as_workload`);
    :meth:`to_dict` carries them beside the fields, so results show the shapes measured.
    """

    trace: str = _role(KIND, doc="a trace file written by sdpalab capture")
    layer: int = _role(
        KIND, doc="a layer the trace holds (the config's axis: layers)", key="layers"
    )
    phase: str = _role(
        KIND, "prefill", "prefill (every captured query), decode (the last) or train (backward too)"
    )
    dtype: str = _role(CHOICE, "float32")
    device: str = _role(PLACE, "cpu")

    def __post_init__(self) -> None:
        check_choice("phase", self.phase, PHASES)
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 0:
            raise ValueError(f"layer={self.layer!r} must be a non-negative integer")
        if self.layer not in self.info.layers:
            raise ValueError(
                f"layer={self.layer} is not in trace {self.trace!r}; valid: "
                + ", ".join(map(str, self.info.layers))
            )
        _check_dtype_device(self)

    @property
    def info(self) -> TraceInfo:
        """The trace file's header (read once per file version)."""
        return read_trace(self.trace)

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def mask(self) -> tuple[str, dict[str, Any]]:
        """The layer's own mask as a mod: ``("causal", {})`` or ``("sliding_window", {...})``."""
        return self.info.mask(self.layer)

    def sizes(self) -> dict[str, int]:
        """The sizes of the attention call, as :class:`Workload` names them."""
        call = self.as_workload()
        return {name: getattr(call, name) for name in fields_with(Workload, SIZE)}

    def as_workload(self) -> Workload:
        """The attention call this layer makes, as a :class:`Workload` of the same shapes, phase,
        dtype and device: what the Gaussian measurement of the same layer runs on."""
        shape = self.info.shape(self.layer)
        return Workload(
            phase=self.phase,
            batch=shape["batch"],
            heads_q=shape["heads_q"],
            heads_kv=shape["heads_kv"],
            seq_kv=shape["seq"],
            head_dim=shape["head_dim"],
            dtype=self.dtype,
            device=self.device,
        )

    def to_dict(self) -> dict[str, Any]:
        """The fields, then the sizes read from the trace (:meth:`sizes`) and its digest (so a
        trace captured again at the same path makes new trial ids)."""
        return {**dataclasses.asdict(self), **self.sizes(), "trace_sha256": self.info.digest}


def fields_with(kind: type, *roles: str, exclude: str | None = None) -> tuple[str, ...]:
    """Names of ``kind``'s fields whose role is one of ``roles`` (any role when none given),
    less those of role ``exclude``."""
    return tuple(
        f.name
        for f in dataclasses.fields(kind)
        if (not roles or f.metadata["role"] in roles) and f.metadata["role"] != exclude
    )


def config_keys(kind: type, exclude: str | None = None) -> tuple[str, ...]:
    """The keys a config names ``kind``'s fields by (a field's own name unless its metadata
    gives another, as ``layer``'s axis ``layers``), less fields of role ``exclude``."""
    return tuple(
        f.metadata.get("key", f.name)
        for f in dataclasses.fields(kind)
        if f.metadata["role"] != exclude
    )


def _union(*names: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(n for group in names for n in group))


WORKLOAD_KINDS = (Workload, ModelWorkload, TraceWorkload)
MARKERS = {TraceWorkload: "trace", ModelWorkload: "model"}
"""The key that makes a workload dict (a trial's, a config's) of this kind, the first that
matches winning; without any, it is an attention :class:`Workload`."""
FIELD_OF_KEY = {
    f.metadata["key"]: f.name
    for kind in WORKLOAD_KINDS
    for f in dataclasses.fields(kind)
    if "key" in f.metadata
}
"""Config keys that differ from their field's name: ``{"layers": "layer"}``."""
CONTEXT_FIELDS = _union(
    *(fields_with(k, role) for role in (KIND, SIZE, PLACE) for k in WORKLOAD_KINDS)
)
"""Fields that describe the work itself (``dtype`` is a choice, so it is not among them). A
context holds only the fields its workload kind has."""
SIZE_FIELDS = _union(*(fields_with(k, SIZE) for k in WORKLOAD_KINDS))
"""Sizes along which attention's (and a model's) memory and time only grow."""


def is_model_workload(workload: dict[str, Any]) -> bool:
    """Whether a workload dict (a trial's, a Result's) names a model rather than one call."""
    return workload_kind(workload) is ModelWorkload


def workload_kind(workload: dict[str, Any]) -> type:
    """The kind of workload a dict (or a config's workload mapping) describes: the first kind
    whose marker key it holds (:data:`MARKERS`), else :class:`Workload`."""
    for kind, marker in MARKERS.items():
        if workload.get(marker) is not None:
            return kind
    return Workload


def workload_from_dict(data: dict[str, Any]) -> Workload | ModelWorkload | TraceWorkload:
    """The workload a dict describes, of the kind its keys say (a trace's sizes, which its
    dict carries, are read from the file again)."""
    kind = workload_kind(data)
    if kind is TraceWorkload:
        data = {k: v for k, v in data.items() if k in fields_with(TraceWorkload)}
    return kind(**data)
