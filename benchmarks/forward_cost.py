"""Cost of one forward pass of a local model on this machine: prefill per prompt token and decode per row,
by batch size and prompt length. It explains the synthesis benchmark's batching figure on CPUs: what
batching can save is decode time, never prefill time.

    python benchmarks/forward_cost.py [--model smollm2-135m-instruct] [--lengths 100,700] [--batches 1,4,16]

Rows have equal lengths and no padding (the cheapest case for a batch); times are medians of a few steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--lengths", default="100,700", help="prompt lengths in tokens, comma-separated")
    parser.add_argument("--batches", default="1,4,16", help="batch sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=8, help="decode steps timed per setting")
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, DynamicCache

    from agents.catalog import resolve_model

    torch.set_num_threads(1)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(args.model), dtype=torch.float32).eval()
    vocab = int(model.config.vocab_size)
    print(f"{args.model} float32, torch threads 1, {os.cpu_count()} CPUs")
    print(f"{'prompt':>6} {'rows':>4} {'prefill ms/token':>16} {'decode ms/step':>14} {'decode ms/row':>13}")
    for length in (int(x) for x in args.lengths.split(",")):
        for rows in (int(x) for x in args.batches.split(",")):
            ids = torch.randint(100, vocab - 100, (rows, length))
            with torch.inference_mode():
                cache = DynamicCache()
                started = time.perf_counter()
                out = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                prefill = time.perf_counter() - started
                token = out.logits[:, -1].argmax(-1, keepdim=True)
                steps = []
                for _ in range(args.steps):
                    started = time.perf_counter()
                    out = model(input_ids=token, past_key_values=cache, use_cache=True, logits_to_keep=1)
                    steps.append(time.perf_counter() - started)
                    token = out.logits[:, -1].argmax(-1, keepdim=True)
            step = statistics.median(steps)
            print(
                f"{length:>6} {rows:>4} {1000 * prefill / (rows * length):>16.2f} {1000 * step:>14.1f} "
                f"{1000 * step / rows:>13.2f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
