"""Loading configs: YAML file + `--set a.b=c` overrides → a validated pydantic model, and its `config_hash`.

Every error a user can cause becomes a `ConfigError` naming the file, the line or field, and the reason.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from collections.abc import Collection
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ValidationError

from configs.errors import ConfigError
from configs.schema import SynthesisConfig, is_execution_field

ConfigT = TypeVar("ConfigT", bound=BaseModel)


def schema_field_names(schema: type[BaseModel]) -> set[str]:
    """Every field name of `schema` and of the models nested in it: what a misspelt key is compared with."""
    names: set[str] = set()
    pending: list[Any] = [schema]
    seen: set[Any] = set()
    while pending:
        kind = pending.pop()
        if kind in seen:
            continue
        seen.add(kind)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            names.update(kind.model_fields)
            pending.extend(field.annotation for field in kind.model_fields.values())
        else:
            # list[X], dict[str, X], X | None: the models sit among the type arguments.
            pending.extend(get_args(kind))
    return names


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


def format_validation_error(
    source: str,
    exc: ValidationError,
    *,
    prefix: tuple[str, ...] = (),
    known: Collection[str] = (),
    unknown: str = "unknown setting",
    depth: int | None = None,
) -> str:
    """The one-line message of a pydantic error: `SOURCE: field 'a.b': reason; field 'c': reason`.

    `prefix` is where the validated mapping sits in the file (`('extra',)`); an unknown key reads as
    `unknown`, with the closest of `known` suggested. `depth` keeps that many parts of each error's
    location: a value that fails every member of a union is then one problem, not one per member.
    """
    problems: dict[str, list[str]] = {}
    for err in exc.errors():
        field = ".".join(str(p) for p in (*prefix, *err["loc"][:depth])) or "(top level)"
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(err["loc"][-1]), known, n=1)
            msg = unknown + (f" (did you mean {close[0]}?)" if close else "")
        else:
            msg = err["msg"].removeprefix("Value error, ")
            if depth is not None and len(err["loc"]) > depth:
                msg += f" (got {err['input']!r})"
        problems.setdefault(field, []).append(msg)
    return f"{source}: " + "; ".join(f"field '{field}': {msgs[0]}" for field, msgs in problems.items())


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
        raise ConfigError(format_validation_error(source, exc, known=schema_field_names(schema))) from None


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
