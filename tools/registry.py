"""The judge's tool box: built-in tools by name, plug-ins by import path (`package.module:Class`), each built
from the run's `ToolsConfig`.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

from configs.errors import ConfigError
from configs.schema import ToolsConfig
from tools.base import JudgeTool


def _reference_answer(config: ToolsConfig) -> JudgeTool:
    from tools.reference_answer import ReferenceAnswerTool

    return ReferenceAnswerTool()


def _calculator(config: ToolsConfig) -> JudgeTool:
    from tools.calculator import CalculatorTool

    return CalculatorTool()


def _finished(config: ToolsConfig) -> JudgeTool:
    from tools.finished import FinishedTool

    return FinishedTool()  # the judge runs it on every candidate anyway; listed so `prefsmith tools` shows it


def _python_sandbox(config: ToolsConfig) -> JudgeTool:
    from tools.sandbox import PythonSandboxTool

    tool = PythonSandboxTool(
        default_timeout_s=config.sandbox_timeout_s,
        default_memory_mb=config.sandbox_memory_mb,
        processes=config.sandbox_processes,
        scratch_mb=config.sandbox_scratch_mb,
        python=config.sandbox_python,
        allow_weaker_isolation=config.sandbox_allow_weaker_isolation,
    )
    # Refuse before a run rather than fail every candidate of it: code is never run unprotected by default.
    problem = tool.isolation_problem()
    if problem is not None:
        raise ConfigError(f"tool 'python_sandbox': {problem}")
    return tool


def _retrieval(config: ToolsConfig) -> JudgeTool:
    from tools.retrieval import RetrievalTool

    if not config.retrieval_corpus:
        raise ConfigError("tool 'retrieval' needs tools.retrieval_corpus (a folder of .txt/.md files or a JSONL file)")
    return RetrievalTool(corpus=config.retrieval_corpus)


def _labor_statistics(config: ToolsConfig) -> JudgeTool:
    from tools.labor import LaborStatisticsTool

    if not config.labor_table:
        raise ConfigError("tool 'labor_statistics' needs tools.labor_table (a BLS CPS table 11 file)")
    if not Path(config.labor_table).expanduser().is_file():
        raise ConfigError(f"tools.labor_table: {config.labor_table} is not a file (a BLS CPS table 11 file)")
    return LaborStatisticsTool(table_path=config.labor_table)


def _instruction_checks(config: ToolsConfig) -> JudgeTool:
    from tools.instruction_checks import InstructionChecksTool

    return InstructionChecksTool()


BUILTIN: dict[str, Callable[[ToolsConfig], JudgeTool]] = {
    "reference_answer": _reference_answer,
    "calculator": _calculator,
    "finished": _finished,
    "python_sandbox": _python_sandbox,
    "retrieval": _retrieval,
    "labor_statistics": _labor_statistics,
    "instruction_checks": _instruction_checks,
}


def load_plugin(path: str) -> type[JudgeTool]:
    """A tool class from `package.module:Class`; it must subclass `tools.base.JudgeTool`."""
    module_name, _, class_name = path.partition(":")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigError(f"tools.enabled: cannot load plug-in tool {path!r} ({exc})") from None
    if not (isinstance(cls, type) and issubclass(cls, JudgeTool)):
        raise ConfigError(f"tools.enabled: {path!r} is not a subclass of tools.base.JudgeTool")
    return cls


def build_tools(config: ToolsConfig, names: list[str] | None = None) -> dict[str, JudgeTool]:
    """The tools `names` (default: `config.enabled`), keyed by tool name."""
    tools: dict[str, JudgeTool] = {}
    for name in config.enabled if names is None else names:
        if ":" in name:
            # A plug-in declares its own name and description as defaults; the base class has none.
            tool = load_plugin(name)()  # type: ignore[call-arg]
        elif name in BUILTIN:
            tool = BUILTIN[name](config)
        else:
            known = ", ".join(sorted(BUILTIN))
            raise ConfigError(f"tools.enabled: unknown tool {name!r} (built-in: {known}; or a module:Class)")
        tools[tool.name] = tool
    return tools
