"""The distilabel 1.5.3 peer of benchmarks/yield_bench.py, run by the interpreter of its own venv (which the
benchmark builds): the documented preference recipe on the same problems and the same model, standalone steps.

TextGeneration (4 generations, temperature 0.8, 64 new tokens) → UltraFeedback (overall rating, the same model as
judge, its default structured output) → FormatTextGenerationDPO; a valid pair is one whose ratings differ.

    <peer venv>/bin/python benchmarks/distilabel_peer.py MODEL_DIR PROBLEMS_JSON

distilabel 1.5.3 builds one outlines logits processor when the judge loads and hands it to every generate call;
the processor keeps the state of the sequences it guided, so the second prompt fails. Each prompt is judged
with its own copy of the freshly built processor. A prompt whose ratings did not all parse makes no pair (the
formatter cannot order None). Prints one JSON line: the figures and every pair.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from typing import Any

from distilabel.models.llms import TransformersLLM
from distilabel.steps.formatting.dpo import FormatTextGenerationDPO
from distilabel.steps.tasks import TextGeneration, UltraFeedback


class OwnProcessorLLM(TransformersLLM):
    """A TransformersLLM whose structured-output processor is copied afresh for every prompt."""

    def load(self) -> None:
        super().load()
        self._fresh = self._logits_processor

    def generate(self, inputs: list[Any], **kwargs: Any) -> list[Any]:  # type: ignore[override]
        if not self._fresh:
            return super().generate(inputs, **kwargs)
        results = []
        for one in inputs:
            self._logits_processor = copy.deepcopy(self._fresh)
            results.extend(super().generate([one], **kwargs))
        return results


def main() -> None:
    model, problems_file = sys.argv[1], sys.argv[2]
    problems = json.loads(open(problems_file, encoding="utf-8").read())
    started = time.perf_counter()
    generator = TransformersLLM(
        model=model, device="cpu", torch_dtype="float32",
        generation_kwargs={"temperature": 0.8, "max_new_tokens": 64, "top_p": 0.95},
    )
    judge_llm = OwnProcessorLLM(model=model, device="cpu", torch_dtype="float32",
                                generation_kwargs={"temperature": 0.0, "max_new_tokens": 256, "do_sample": False})
    generate = TextGeneration(llm=generator, num_generations=4, group_generations=True)
    judge = UltraFeedback(llm=judge_llm, aspect="overall-rating", use_default_structured_output=True)
    to_dpo = FormatTextGenerationDPO()
    for step in (generate, judge, to_dpo):
        step.load()
    loaded = time.perf_counter()

    rows: list[dict[str, Any]] = []
    errors: list[str] = []  # prompts whose judging raised inside distilabel: no pair
    target_tokens = 0
    for problem in problems:
        (generated,) = list(generate.process([{"instruction": problem["prompt"]}]))
        generated[0]["generations"] = generated[0].pop("generation")  # grouped: UltraFeedback's input column
        tokenizer = generator._pipeline.tokenizer  # what distilabel's own token statistics count with
        target_tokens += sum(len(tokenizer.encode(g or "", add_special_tokens=False)) 
                             for g in generated[0]["generations"])
        try:
            (judged,) = list(judge.process(generated))
            if any(rating is None for rating in judged[0].get("ratings") or [None]):
                # the judge's answer did not parse: FormatTextGenerationDPO cannot order None ratings (it raises)
                rows.append({})
                continue
            (formatted,) = list(to_dpo.process(judged))
            rows.extend(formatted)
        except IndexError as exc:  # raised inside distilabel on a judge answer it cannot line up with the generations
            errors.append(f"{type(exc).__name__}: {exc}")
            rows.append({})
    seconds = time.perf_counter() - started
    pairs = [
        {"answer": problem["answer"], "chosen": (row.get("chosen") or [{"content": ""}])[-1]["content"],
         "rejected": (row.get("rejected") or [{"content": ""}])[-1]["content"],
         "chosen_rating": row.get("chosen_rating"), "rejected_rating": row.get("rejected_rating")}
        for problem, row in zip(problems, rows, strict=True)
    ]
    valid = [p for p in pairs if p["chosen_rating"] is not None and p["rejected_rating"] is not None
             and p["chosen_rating"] != p["rejected_rating"]]
    print(json.dumps({"seconds": seconds, "load_seconds": loaded - started, "prompts": len(problems),
                      "target_tokens": target_tokens, "valid": len(valid), "judge_errors": errors,
                      "pairs": pairs}))


if __name__ == "__main__":
    main()
