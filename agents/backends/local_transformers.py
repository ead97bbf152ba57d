"""The transformers backend (the CPU default): one batched decode loop per engine call.

Each distinct prompt is prefilled once, unpadded; the rows then decode together over a left-padded KV
cache. Per-row sampling (own seed, temperature, top_p), stop strings, token budgets and JSON-schema grammars
(xgrammar) are applied row by row; a row that ends leaves the batch (and the KV cache) at once.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

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
    tokens: list[int] = field(default_factory=list)


def _draw(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        # keep the smallest prefix whose mass reaches top_p (always at least the most likely token)
        outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= top_p
        sorted_probs[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
    return int(torch.multinomial(probs, 1, generator=generator))


def _finish(row: _Row, reason: FinishReason, text: str) -> None:
    row.finished, row.finish_reason, row.completion_tokens, row.text = True, reason, len(row.tokens), text


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
        """Decode every row together, one forward pass per step over the rows still running. A row that ends
        (EOS, stop string, its budget) leaves the batch and the KV cache at once, so a long answer never makes
        the short ones pay for padding steps."""
        import xgrammar

        bitmask = None
        if any(row.grammar is not None for row in rows):
            for row in rows:
                row.matcher = xgrammar.GrammarMatcher(row.grammar) if row.grammar is not None else None
            bitmask = xgrammar.allocate_token_bitmask(len(rows), int(self.model.config.vocab_size))
        active = list(range(len(rows)))  # the rows still decoding, in batch order
        with torch.inference_mode():
            cache, attention_mask, next_position, logits = self._prefill(rows)
            while True:
                chosen = self._choose([rows[i] for i in active], logits, bitmask)
                keep = [j for j, i in enumerate(active) if not self._advance(rows[i], chosen[j])]
                if not keep:
                    return
                if len(keep) < len(active):
                    index = torch.tensor(keep)
                    cache.batch_select_indices(index)
                    attention_mask, next_position = attention_mask[index], next_position[index]
                    active = [active[j] for j in keep]
                    chosen = [chosen[j] for j in keep]
                attention_mask = torch.cat([attention_mask, attention_mask.new_ones((len(active), 1))], dim=-1)
                logits = self._step(
                    torch.tensor(chosen).unsqueeze(-1), attention_mask, next_position.unsqueeze(-1), cache
                )
                next_position = next_position + 1

    def _prefill(self, rows: list[_Row]) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's KV cache (left-padded), attention mask, next positions and first-token logits.

        Each distinct prompt is run once and alone: the n samples of a request share its prefill, and no
        prompt pays for the padding up to the longest one (prefill costs the same per token at any batch size
        on a CPU). The per-prompt caches are then laid side by side, left-padded, for the batched decode."""
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer

        width = max(len(row.prompt_ids) for row in rows)
        attention_mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            attention_mask[i, width - len(row.prompt_ids) :] = 1
        next_position = attention_mask.sum(-1)
        distinct: dict[tuple[int, ...], list[int]] = {}
        for i, row in enumerate(rows):
            distinct.setdefault(tuple(row.prompt_ids), []).append(i)
        prefilled: list[tuple[list[int], Any, torch.Tensor]] = []
        for prompt, members in distinct.items():
            cache = DynamicCache()
            ids = torch.tensor([prompt])
            logits = self._step(ids, torch.ones_like(ids), torch.arange(len(prompt)).unsqueeze(0), cache)
            if not all(type(layer) is DynamicLayer for layer in cache.layers):
                return self._prefill_padded(rows, attention_mask)  # e.g. sliding-window layers: pad instead
            prefilled.append((members, cache, logits[0]))
        layers = []
        for layer in range(len(prefilled[0][1].layers)):
            sample = prefilled[0][1].layers[layer].keys
            keys = sample.new_zeros((len(rows), sample.shape[1], width, sample.shape[3]))
            values = keys.clone()
            for members, cache, _ in prefilled:
                length = cache.layers[layer].keys.shape[2]
                keys[members, :, width - length :] = cache.layers[layer].keys[0]
                values[members, :, width - length :] = cache.layers[layer].values[0]
            layers.append((keys, values))
        first = torch.empty((len(rows), prefilled[0][2].shape[-1]))
        for members, _, logits in prefilled:
            first[members] = logits
        return DynamicCache(ddp_cache_data=layers), attention_mask, next_position, first

    def _prefill_padded(
        self, rows: list[_Row], attention_mask: torch.Tensor
    ) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """One left-padded prefill of every row, for caches that cannot be laid side by side."""
        from transformers import DynamicCache

        width = attention_mask.shape[1]
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        for i, row in enumerate(rows):
            input_ids[i, width - len(row.prompt_ids) :] = torch.tensor(row.prompt_ids)
        positions = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache()
        logits = self._step(input_ids, attention_mask, positions, cache)
        return cache, attention_mask, attention_mask.sum(-1), logits

    def _step(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, positions: torch.Tensor, cache: Any) -> Any:
        """One forward pass; the next-token logits of each row, in float32."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=positions,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()

    @staticmethod
    def _choose(rows: list[_Row], logits: torch.Tensor, bitmask: torch.Tensor | None) -> list[int]:
        """Each row's next token: its grammar's mask, then its own generator (or greedy), independent of
        which other rows share the batch."""
        import xgrammar

        masked = [j for j, row in enumerate(rows) if row.matcher is not None]
        if masked:
            assert bitmask is not None, "a batch with grammar-bound rows always allocates a bitmask"
            for j, row in enumerate(rows):
                if row.matcher is not None:
                    row.matcher.fill_next_token_bitmask(bitmask, j)
            xgrammar.apply_token_bitmask_inplace(logits, bitmask, indices=masked)
        return [
            int(torch.argmax(logits[j]))
            if row.temperature == 0
            else _draw(logits[j], row.temperature, row.top_p, row.generator)
            for j, row in enumerate(rows)
        ]

    def _advance(self, row: _Row, token: int) -> bool:
        """Append `token` to the row; True when the row has ended (and records why and its text)."""
        row.tokens.append(token)
        if token in self.eos_ids:
            # the EOS token was generated and counts as output, as in vLLM; it is not part of the text
            _finish(row, "stop", self._decode(row.tokens[:-1]))
            return True
        if row.matcher is not None and not row.matcher.accept_token(token):
            raise RuntimeError(f"grammar rejected token {token} it had allowed")
        if row.stop:
            text = self._decode(row.tokens)
            cut = min((text.find(stop) for stop in row.stop if stop in text), default=-1)
            if cut >= 0:
                _finish(row, "stop", text[:cut])
                return True
        if len(row.tokens) >= row.max_new:
            _finish(row, "length", self._decode(row.tokens))
            return True
        return False

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)
