"""transformers' and torchao's warnings stay off the user's terminal while sdpalab loads and runs
a model, and sdpalab calls models the way the installed transformers asks (issue 19, item 6)."""

import logging
import subprocess
import sys
import warnings

import pytest
import torch

from sdpalab.models.generation import teacher_forced_logits
from sdpalab.models.loading import cache_argument
from sdpalab.models.quiet import quiet_libraries


def test_library_notices_are_quiet_inside_and_untouched_outside():
    transformers_logger = logging.getLogger("transformers.modeling_utils")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        with quiet_libraries():
            # as a model's forward warns: attributed to torch's Module.__call__
            warnings.warn_explicit(
                "`past_key_values` is deprecated", FutureWarning, "module.py", 1789,
                module="torch.nn.modules.module",
            )  # fmt: skip
            warnings.warn_explicit(
                "some notice", UserWarning, "x.py", 1, module="transformers.generation.utils"
            )
            assert not transformers_logger.isEnabledFor(logging.WARNING)
            assert not logging.getLogger("torchao").isEnabledFor(logging.WARNING)
        assert seen == []
        # outside, a library user's warnings and logging are as they set them
        warnings.warn_explicit("kept", UserWarning, "x.py", 1, module="transformers.x")
        assert [str(w.message) for w in seen] == ["kept"]
    assert transformers_logger.isEnabledFor(logging.WARNING)


class Recorder(torch.nn.Module):
    """A model whose forward takes its cache by ``name``."""

    def __init__(self, name):
        super().__init__()
        self.name, self.calls = name, []

    def forward(self, input_ids, **kwargs):
        self.calls.append(sorted(kwargs))
        logits = torch.zeros(*input_ids.shape, 5)
        return type("Out", (), {"logits": logits})()


def new_forward(self, input_ids, cache=None, logits_to_keep=0):
    return Recorder.forward(self, input_ids, cache=cache)


def old_forward(self, input_ids, past_key_values=None):
    return Recorder.forward(self, input_ids, past_key_values=past_key_values)


@pytest.mark.parametrize(
    ("forward", "name"), [(new_forward, "cache"), (old_forward, "past_key_values")]
)
def test_the_cache_goes_by_the_name_the_forward_takes(forward, name):
    model = Recorder(name)
    model.forward = forward.__get__(model)
    assert cache_argument(model) == name
    teacher_forced_logits(
        model, torch.zeros(1, 3, dtype=torch.long), torch.zeros(1, 2, dtype=torch.long), object()
    )
    assert model.calls == [[name], [name]]


@pytest.mark.slow
def test_sdpalab_model_prints_no_library_warnings():
    pytest.importorskip("transformers")
    done = subprocess.run(
        [sys.executable, "-m", "sdpalab.cli", "model", "tiny-llama", "--prompt-len", "8",
         "--new-tokens", "2", "--kv-cache", "static", "--kv-quant", "int8"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    for notice in ("Warning", "Failed to load", "_pytree", "forward_call", "deprecated"):
        assert notice not in done.stderr, done.stderr
