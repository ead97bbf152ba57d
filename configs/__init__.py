"""prefsmith configs: the pydantic schema of every config and its YAML presets.

Loading with `--set` overrides and `config_hash` live in `configs.loading`.
"""

from configs.errors import ConfigError, PrefsmithError
from configs.loading import apply_override, config_hash, data_relevant, load_config, preset_path
from configs.schema import (
    GameConfig,
    ModelConfig,
    PromptSourceConfig,
    RayConfig,
    RolesConfig,
    SamplingConfig,
    StorageConfig,
    SynthesisConfig,
    ToolsConfig,
    TrainingConfig,
)

__all__ = [
    "ConfigError",
    "GameConfig",
    "ModelConfig",
    "PrefsmithError",
    "PromptSourceConfig",
    "RayConfig",
    "RolesConfig",
    "SamplingConfig",
    "StorageConfig",
    "SynthesisConfig",
    "ToolsConfig",
    "TrainingConfig",
    "apply_override",
    "config_hash",
    "data_relevant",
    "load_config",
    "preset_path",
]
