"""`prefsmith tools list|run`: the judge's tools with their argument schemas, and one tool called by hand.

`run` prints the tool's evidence as JSON, as the judge would see it (how to debug a judge).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated

import typer

from configs.errors import PrefsmithError
from pipelines.cli.options import SetOption
from pipelines.cli.terminal import console

if TYPE_CHECKING:
    from configs.schema import ToolsConfig

tools_app = typer.Typer(help="The judge's tools: list them, call one from the terminal.", no_args_is_help=True)


def _tools_config(config: str | None, set_: list[str] | None) -> ToolsConfig:
    from configs.loading import load_config

    return load_config(config, set_ or []).tools


@tools_app.command("list")
def tools_list(
    config: Annotated[str | None, typer.Option("--config", "-c", help="Config whose tool settings to use.")] = None,
    set_: SetOption = None,
) -> None:
    """List the built-in tools with their argument schemas."""
    from tools.registry import BUILTIN, build_tools

    settings = _tools_config(config, set_)
    for name in BUILTIN:
        try:
            tool = build_tools(settings, [name])[name]
        except PrefsmithError as exc:
            console.print(f"{name}: (needs configuration: {exc})", markup=False)
            continue
        args = ", ".join(tool.args)
        console.print(f"{name}({args}): {tool.description}", markup=False)


@tools_app.command("run")
def tools_run(
    name: Annotated[str, typer.Argument(help="Tool name, or a plug-in as package.module:Class.")],
    args: Annotated[str, typer.Option("--args", help="The tool's arguments as a JSON object.")] = "{}",
    config: Annotated[str | None, typer.Option("--config", "-c", help="Config whose tool settings to use.")] = None,
    set_: SetOption = None,
) -> None:
    """Call one tool and print its evidence as JSON (how to debug a judge)."""
    from pydantic import ValidationError

    from configs.errors import ConfigError
    from configs.loading import format_validation_error
    from tools.registry import build_tools

    try:
        arguments = json.loads(args)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"--args: invalid JSON at column {exc.colno} ({exc.msg})") from None
    if not isinstance(arguments, dict):
        raise ConfigError("--args: expected a JSON object of argument names to values")
    tool = next(iter(build_tools(_tools_config(config, set_), [name]).values()))
    try:
        tool.args_schema.model_validate(arguments)  # type: ignore[union-attr]
    except ValidationError as exc:
        known = tool.args_schema.model_fields  # type: ignore[union-attr]
        message = format_validation_error(f"--args for tool {tool.name}", exc, known=known, unknown="unknown argument")
        raise ConfigError(message) from None
    print(json.dumps(tool.evidence(arguments).model_dump(), indent=2))

