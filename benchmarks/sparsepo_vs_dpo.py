"""Benchmark: SparsePO (each mask type) vs. TRL's DPO on the same model, data and batch, in one run.

Prints step time (forward + backward + optimizer step) and peak memory, and their ratios to DPO. Each
variant runs in its own subprocess so that peak memory is not shared: on CPU it is the peak resident set
size sampled during the steps, minus the resident size just before them (model loading is excluded).
Run: `OMP_NUM_THREADS=1 .venv/bin/python benchmarks/sparsepo_vs_dpo.py [--steps 5] [--pairs 2]`
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

VARIANTS = ("dpo", "sparsepo-ones", "sparsepo-activation", "sparsepo-learned")
REPO = Path(__file__).resolve().parents[1]


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakSampler:
    """Samples this process's resident set size every few milliseconds (CPU has no allocator counter)."""

    def __init__(self) -> None:
        self.peak = _rss_bytes()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.002)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_variant(variant: str, export: str, steps: int, pairs: int) -> dict[str, Any]:
    """Time `steps` optimizer steps of one variant on one fixed batch of `pairs` pairs."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    from agents.catalog import prepare
    from storage.preference_sets import load_preference_set
    from training.sparsepo import SparsePOConfig, SparsePOTrainer

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    torch.manual_seed(0)
    path = str(prepare("smollm2-135m-instruct"))
    common = {
        "output_dir": tempfile.mkdtemp(),
        "bf16": False,
        "use_cpu": True,
        "beta": 0.1,
        "learning_rate": 1e-6,
        "per_device_train_batch_size": pairs,
        "max_length": 256,
        "report_to": [],
    }
    if variant == "dpo":
        args: Any = DPOConfig(**common)
        trainer_cls: Any = DPOTrainer
    else:
        args = SparsePOConfig(mask_type=variant.removeprefix("sparsepo-"), **common)
        trainer_cls = SparsePOTrainer
    trainer = trainer_cls(
        model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        ref_model=AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32),
        args=args,
        train_dataset=load_preference_set(export),
        processing_class=AutoTokenizer.from_pretrained(path),
    )
    batch = trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in range(pairs)]))
    optimizer = trainer.create_optimizer()
    trainer.model.train()

    def step() -> None:
        loss = trainer.compute_loss(trainer.model, batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    step()  # warm-up: allocates the optimizer state, so every variant is measured in steady state
    baseline = _rss_bytes()
    times = []
    with PeakSampler() as sampler:
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    return {
        "variant": variant,
        "tokens": int(batch["attention_mask"].sum()),
        "step_s": sorted(times)[len(times) // 2],
        "peak_step_mb": (sampler.peak - baseline) / 2**20,
        "peak_rss_mb": sampler.peak / 2**20,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="Measured steps per variant (median reported).")
    parser.add_argument("--pairs", type=int, default=2, help="Pairs per batch.")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    parser.add_argument("--export", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.export, args.steps, args.pairs)))
        return

    sys.path.insert(0, str(REPO))
    from tests.test_sparsepo import PAIRS, write_export

    with tempfile.TemporaryDirectory() as tmp:
        export = str(write_export(Path(tmp) / "export", PAIRS))
        results = []
        for variant in VARIANTS:
            command = [sys.executable, __file__, "--variant", variant, "--export", export]
            command += ["--steps", str(args.steps), "--pairs", str(args.pairs)]
            done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
    dpo = results[0]
    print(
        f"SmolLM2-135M-Instruct, fp32, CPU, {args.pairs} pairs/batch ({dpo['tokens']} tokens), "
        f"median of {args.steps} steps, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}"
    )
    print(f"{'variant':<22}{'step s':>9}{'× DPO':>8}{'peak MB':>10}{'× DPO':>8}{'peak RSS MB':>13}")
    for r in results:
        print(
            f"{r['variant']:<22}{r['step_s']:>9.3f}{r['step_s'] / dpo['step_s']:>8.2f}"
            f"{r['peak_step_mb']:>10.0f}{r['peak_step_mb'] / max(dpo['peak_step_mb'], 1e-9):>8.2f}"
            f"{r['peak_rss_mb']:>13.0f}"
        )


if __name__ == "__main__":
    main()
