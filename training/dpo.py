"""Plain DPO: TRL's `DPOTrainer` and `DPOConfig` behind the one trainer interface (`prefsmith iterate --trainer dpo`).

The config comes from configs/train_dpo.yaml; the model is measured by task evaluation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, ClassVar

from trl import DPOConfig, DPOTrainer

from training.trainer import PreferenceTrainer

if TYPE_CHECKING:
    from datasets import Dataset


class DPOPreferenceTrainer(PreferenceTrainer):
    name: ClassVar[str] = "dpo"
    config_class: ClassVar[type[DPOConfig]] = DPOConfig

    def make_trainer(self, model: str, tokenizer: Any, dataset: Dataset, **kwargs: Any) -> DPOTrainer:
        return DPOTrainer(model=model, args=self.args, train_dataset=dataset, processing_class=tokenizer, **kwargs)
