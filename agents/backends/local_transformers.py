"""The transformers backend (the CPU default): one batched, left-padded `generate` per engine call.

Per-row sampling (own seed, temperature, top_p), stop strings, token budgets and JSON-schema grammars
(xgrammar) are applied row by row inside that single call.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    GenerationConfig,
    LogitsProcessor,
    LogitsProcessorList,
    StoppingCriteria,
    StoppingCriteriaList,
)

from agents.backends.errors import InvalidRequestError
from agents.backends.protocol import ChatRequest, ChatResult, Completion, FinishReason, LocalBackend
from agents.catalog import resolve_model
from configs.schema import ModelConfig

_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample `index` of a request: independent streams per sample, stable across batch layouts."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class _Row:
    """One sequence in the batch: sample `sample` of request `request`."""

    request: int
    prompt_ids: list[int]
    max_new: int
    temperature: float
    top_p: float
    stop: list[str]
    generator: torch.Generator | None
    grammar: Any | None  # xgrammar.CompiledGrammar
    matcher: Any | None = None
    finished: bool = False
    finish_reason: FinishReason = "length"
    completion_tokens: int = 0
    text: str = ""


@dataclass
class _BatchState:
    rows: list[_Row]
    prompt_width: int
    bitmask: torch.Tensor | None = None
    grammar_rows: list[int] = field(default_factory=list)


class _RowSampler(LogitsProcessor):
    """Masks each row's logits with its grammar, then samples sampled rows with their own generator and
    leaves only the drawn token, so that `generate`'s greedy step picks it. (A batched `generate` with
    `do_sample=True` would draw every row from one global RNG, which makes seeds depend on the batch.)"""

    def __init__(self, state: _BatchState) -> None:
        self.state = state

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        import xgrammar

        state = self.state
        generated = input_ids.shape[1] - state.prompt_width
        masked: list[int] = []
        for i in state.grammar_rows:
            row = state.rows[i]
            if row.finished:
                continue
            if generated > 0 and not row.matcher.accept_token(int(input_ids[i, -1])):
                raise RuntimeError(f"grammar rejected token {int(input_ids[i, -1])} it had allowed")
            row.matcher.fill_next_token_bitmask(state.bitmask, i)
            masked.append(i)
        if masked:
            xgrammar.apply_token_bitmask_inplace(scores, state.bitmask, indices=masked)
        for i, row in enumerate(state.rows):
            if row.finished or row.temperature == 0:
                continue
            token = _draw(scores[i], row.temperature, row.top_p, row.generator)
            scores[i].fill_(float("-inf"))
            scores[i, token] = 0.0
        return scores


def _draw(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the most likely token)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


class _RowStop(StoppingCriteria):
    """Ends each row on an EOS token, a stop string or its own token budget, and records why and where:
    after a row ends, `generate` keeps appending padding to it, which must not count as output."""

    def __init__(self, state: _BatchState, eos_ids: set[int], tokenizer: Any) -> None:
        self.state = state
        self.eos_ids = eos_ids
        self.tokenizer = tokenizer

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        state = self.state
        generated = input_ids.shape[1] - state.prompt_width
        done = torch.zeros(input_ids.shape[0], dtype=torch.bool)
        for i, row in enumerate(state.rows):
            if not row.finished:
                self._update(row, input_ids[i, state.prompt_width :].tolist(), generated)
            done[i] = row.finished
        return done

    def _update(self, row: _Row, tokens: list[int], generated: int) -> None:
        if tokens[-1] in self.eos_ids:
            # the EOS token was generated and counts as output, as in vLLM; it is not part of the text
            self._finish(row, "stop", generated, self._decode(tokens[:-1]))
            return
        if row.stop:
            text = self._decode(tokens)
            cut = min((text.find(stop) for stop in row.stop if stop in text), default=-1)
            if cut >= 0:
                self._finish(row, "stop", generated, text[:cut])
                return
        if generated >= row.max_new:
            self._finish(row, "length", generated, self._decode(tokens))

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)

    @staticmethod
    def _finish(row: _Row, reason: FinishReason, tokens: int, text: str) -> None:
        row.finished, row.finish_reason, row.completion_tokens, row.text = True, reason, tokens, text


class TransformersBackend(LocalBackend):
    """A Hugging Face causal LM on this process's CPU (or GPU), with xgrammar for JSON-schema answers."""

    supports_json_schema = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config.max_batch_size)
        torch.set_num_threads(config.threads)
        path = resolve_model(config.name)
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer.padding_side = "left"
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=_DTYPES[config.dtype]).eval()
        self.max_model_len = config.max_model_len or int(self.model.config.max_position_embeddings)
        generation_eos = self.model.generation_config.eos_token_id
        eos = set(generation_eos if isinstance(generation_eos, list) else [generation_eos])
        eos.add(self.tokenizer.eos_token_id)
        self.eos_ids = {int(token) for token in eos if token is not None}
        pad = self.tokenizer.pad_token_id
        self.pad_id = int(pad) if pad is not None else min(self.eos_ids)
        self._grammar_compiler: Any | None = None
        self._grammars: dict[str, Any] = {}

    def _grammar(self, schema: dict[str, Any]) -> Any:
        import xgrammar

        key = json.dumps(schema)  # property order is generation order: never sort the keys
        if key not in self._grammars:
            if self._grammar_compiler is None:
                info = xgrammar.TokenizerInfo.from_huggingface(
                    self.tokenizer,
                    vocab_size=int(self.model.config.vocab_size),
                    stop_token_ids=sorted(self.eos_ids),
                )
                self._grammar_compiler = xgrammar.GrammarCompiler(info, max_threads=1)
            # compact JSON: a small model allowed free whitespace can loop on newlines until its budget ends
            self._grammars[key] = self._grammar_compiler.compile_json_schema(key, any_whitespace=False)
        return self._grammars[key]

    def _generate_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        results: list[ChatResult | None] = [None] * len(requests)
        prompt_tokens = [0] * len(requests)
        rows: list[_Row] = []
        for index, request in enumerate(requests):
            ids = self.admit(request)
            if isinstance(ids, ChatResult):
                results[index] = ids
                continue
            prompt_tokens[index] = len(ids)
            grammar = None
            if request.json_schema is not None:
                try:
                    grammar = self._grammar(request.json_schema)
                except Exception as exc:  # xgrammar raises plain RuntimeError/ValueError for bad schemas
                    results[index] = ChatResult.failed(InvalidRequestError(f"unusable JSON schema: {exc}"))
                    continue
            seed = request.seed if request.seed is not None else random.randrange(2**63)
            for sample in range(request.n):
                generator = None
                if request.temperature > 0:
                    generator = torch.Generator().manual_seed(sample_seed(seed, sample))
                rows.append(
                    _Row(
                        request=index,
                        prompt_ids=ids,
                        max_new=min(request.max_tokens, self.max_model_len - len(ids)),
                        temperature=request.temperature,
                        top_p=request.top_p,
                        stop=request.stop,
                        generator=generator,
                        grammar=grammar,
                    )
                )
        if rows:
            self._run(rows)
        completions: dict[int, list[Completion]] = {}
        for row in rows:
            completions.setdefault(row.request, []).append(
                Completion(text=row.text, finish_reason=row.finish_reason, completion_tokens=row.completion_tokens)
            )
        return [
            result
            if result is not None
            else ChatResult(completions=completions[index], prompt_tokens=prompt_tokens[index])
            for index, result in enumerate(results)
        ]

    def _run(self, rows: list[_Row]) -> None:
        import xgrammar

        width = max(len(row.prompt_ids) for row in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
            attention_mask[i, width - len(row.prompt_ids) :] = 1
        state = _BatchState(rows=rows, prompt_width=width)
        state.grammar_rows = [i for i, row in enumerate(rows) if row.grammar is not None]
        if state.grammar_rows:
            for i in state.grammar_rows:
                rows[i].matcher = xgrammar.GrammarMatcher(rows[i].grammar)
            state.bitmask = xgrammar.allocate_token_bitmask(len(rows), int(self.model.config.vocab_size))
        generation_config = GenerationConfig(
            do_sample=False,
            max_new_tokens=max(row.max_new for row in rows),
            pad_token_id=self.pad_id,
            eos_token_id=sorted(self.eos_ids),
        )
        with torch.inference_mode():
            self.model.generate(
                input_ids=input_ids,
                attention_mask=attention_mask,
                generation_config=generation_config,
                logits_processor=LogitsProcessorList([_RowSampler(state)]),
                stopping_criteria=StoppingCriteriaList([_RowStop(state, self.eos_ids, self.tokenizer)]),
            )
