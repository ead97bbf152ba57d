"""The `prefsmith` command line (also `python -m pipelines.cli`, which `ray job submit` runs).

A module per command group, assembled in `pipelines.cli.app`. Errors a user can cause print one line and exit
non-zero; a traceback means a bug in prefsmith.
"""

from pipelines.cli.app import main

__all__ = ["main"]
