"""SparsePO on 2 Ray Train workers (TorchTrainer + the HF integration, DDP over gloo) on CPU.

Marked `ray`-heavy but kept in CI: it starts a local 2-CPU Ray and trains a tiny model for two steps.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.test_sparsepo import PAIRS, save_tiny_llama, write_export
from training.masks import MASKS_WEIGHTS_NAME, TokenMaskNetworks

pytestmark = [pytest.mark.model, pytest.mark.ray, pytest.mark.train]


@pytest.fixture(scope="module")
def local_ray() -> Iterator[None]:
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield
    finally:
        ray.shutdown()


@pytest.fixture(scope="module")
def tiny_model(small_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_llama(tmp_path_factory.mktemp("tiny-llama"), small_model_path)


def test_two_ray_train_workers_train_and_checkpoint(local_ray: None, tiny_model: Path, tmp_path: Path) -> None:
    from training.train import load_trainer_from_file, train_on_ray

    export = write_export(tmp_path / "export", PAIRS[:4])
    out = tmp_path / "run"
    # 4 pairs, 2 workers × 1 pair per step: two steps make one epoch, each worker sees its own half.
    trainer = load_trainer_from_file(
        "sparsepo",
        "train_sparsepo",
        [
            f"model={tiny_model}",
            "max_steps=2",
            "per_device_train_batch_size=1",
            "learning_rate=1e-2",
            "extra.save_steps=2",
        ],
        str(export),
        out,
    )
    summary = train_on_ray(trainer, num_workers=2)
    assert summary.global_step == 2
    losses = [entry["loss"] for entry in summary.log_history if "loss" in entry]
    assert len(losses) == 2 and all(loss > 0 for loss in losses)
    assert (out / "checkpoint-2" / MASKS_WEIGHTS_NAME).is_file()
    masks = TokenMaskNetworks.from_pretrained(out / "checkpoint-2")
    fresh = TokenMaskNetworks(masks.num_layers, masks.hidden_size, independent=False)
    assert (masks.reward.layer_bias - fresh.reward.layer_bias).abs().max().item() > 1e-3
    # Ray Train received the HF checkpoint through RayTrainReportCallback.
    reported = list((out / "ray" / "sparsepo").glob("checkpoint_*/checkpoint/trainer_state.json"))
    assert reported and json.loads(reported[-1].read_text())["global_step"] == 2
