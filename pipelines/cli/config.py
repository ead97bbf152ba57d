"""`prefsmith config show`: a config validated and printed with its overrides applied.

Secrets are masked in what is printed; the config hash closes the output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from pipelines.cli.options import SetOption
from pipelines.cli.terminal import console

if TYPE_CHECKING:
    from configs.schema import SynthesisConfig

config_app = typer.Typer(help="Configs: validate, show with overrides applied, and hash.", no_args_is_help=True)


@config_app.command("show")
def config_show(
    config: Annotated[str, typer.Option("--config", "-c", help="YAML file or preset name.")] = "quickstart",
    set_: SetOption = None,
) -> None:
    """Validate a config, print it with overrides applied, and its config hash."""
    import yaml

    from configs.loading import config_hash, load_config
    from configs.secrets import masked

    loaded: SynthesisConfig = load_config(config, set_ or [])
    console.print(yaml.safe_dump(masked(loaded.model_dump(mode="json")), sort_keys=False), end="", markup=False)
    console.print(f"# config_hash: {config_hash(loaded)}", markup=False)

