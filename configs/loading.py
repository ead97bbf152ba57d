"""Loading configs: YAML file + `--set a.b=c` overrides → a validated pydantic model, and its `config_hash`.

Every error a user can cause becomes a `ConfigError` naming the file, the line or field, and the reason.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from configs.errors import ConfigError
from configs.schema import SynthesisConfig, is_execution_field

ConfigT = TypeVar("ConfigT", bound=BaseModel)

def preset_path(name: str) -> Path:
    """The packaged YAML preset `name` (e.g. 'quickstart')."""
    path = Path(str(resources.files("configs") / f"{name}.yaml"))
    if not path.is_file():
        raise ConfigError(f"no preset named {name!r}")
    return path


def resolve_config_path(path_or_preset: str | Path) -> Path:
    """A path to a YAML file, or the name of a packaged preset ('quickstart')."""
    path = Path(path_or_preset)
    if path.is_file():
        return path
    if path.suffix == "" and path.parent == Path("."):
        try:
            return preset_path(str(path))
        except ConfigError:
            pass
    raise ConfigError(f"{path}: config file not found")


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror})") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: invalid YAML ({problem})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(data).__name__}")
    return data


def apply_override(data: dict[str, Any], override: str) -> None:
    """Apply one `a.b.c=value` override in place; the value is parsed as YAML (`3`, `true`, `[a, b]`)."""
    key, sep, raw = override.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {override!r}: expected KEY=VALUE, e.g. sampling.temperature=0.7")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    node = data
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {override!r}: {part!r} is not a section")
        node = child
    node[parts[-1]] = value


def _format_validation_error(source: str, exc: ValidationError) -> str:
    problems = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        problems.append(f"field '{field}': {msg}")
    return f"{source}: " + "; ".join(problems)


def load_config(
    path: str | Path | None = None,
    overrides: list[str] | tuple[str, ...] = (),
    schema: type[ConfigT] = SynthesisConfig,  # type: ignore[assignment]
) -> ConfigT:
    """Load `path` (YAML file or preset name; None = defaults), apply overrides, validate against `schema`."""
    source = "defaults"
    data: dict[str, Any] = {}
    if path is not None:
        resolved = resolve_config_path(path)
        source = str(resolved)
        data = _read_yaml(resolved)
    for override in overrides:
        apply_override(data, override)
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc)) from None


def data_relevant(model: BaseModel) -> Any:
    """The part of a config that changes produced data: execution fields removed, recursively."""

    def strip(value: Any) -> Any:
        if isinstance(value, BaseModel):
            return {
                name: strip(getattr(value, name))
                for name in type(value).model_fields
                if not is_execution_field(type(value), name)
            }
        if isinstance(value, dict):
            return {k: strip(v) for k, v in sorted(value.items())}
        if isinstance(value, list | tuple):
            return [strip(v) for v in value]
        return value

    return strip(model)


def config_hash(model: BaseModel) -> str:
    """sha256 over the data-relevant settings (execution knobs excluded), as 64 hex characters."""
    canonical = json.dumps(data_relevant(model), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()
