"""The transformers backend (the CPU default): one batched decode loop that requests join while it runs.

Each distinct prompt is prefilled once, unpadded; the rows then decode together over a left-padded KV
cache. Between two decode steps the loop admits the requests queued since (continuous batching, as in
vLLM's engine): their prefilled rows are appended to the running cache, the narrower side padded on the
left, so a short request never waits for a long one to end. Per-row sampling (own seed, temperature, top_p),
stop strings, token budgets and JSON-schema grammars (xgrammar) are applied row by row, so an answer does
not depend on which rows share its steps; a row that ends leaves the batch (and the KV cache) at once, and
a caller is answered as soon as its own rows have all ended.

The loop runs in the callers' threads: one waiting caller drives it, and hands it on to another as soon as
its own answer is complete. `max_batch_size` caps the requests decoding at once (each with its n rows);
more wait, first come first served, until rows leave. `engine_calls` counts admission waves (the requests
taken and prefilled together); `joined_waves` counts those that joined a loop already decoding. A model
whose cache cannot be laid side by side (sliding-window layers) prefills each wave padded and admits
nothing more until that wave has drained.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache
from transformers.cache_utils import DynamicLayer

from agents.backends.errors import InvalidRequestError
from agents.backends.protocol import (
    AbandonCheck,
    ChatRequest,
    ChatResult,
    Completion,
    FinishReason,
    LocalBackend,
    _Ticket,
    abandoned_at,
    cut_after_patterns,
)
from agents.catalog import resolve_model
from configs.schema import ModelConfig

_DTYPES = {"auto": "auto", "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def sample_seed(seed: int, index: int) -> int:
    """Seed of sample `index` of a request: independent streams per sample, stable across batch layouts."""
    digest = hashlib.sha256(f"{seed}:{index}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@dataclass
class _Order:
    """A caller's ticket inside the loop: its answers so far, and the rows of its requests still decoding."""

    ticket: _Ticket
    results: list[ChatResult | None]
    admitted: int = 0  # its requests taken into the loop so far, in order
    rows: dict[int, list[_Row]] = field(default_factory=dict)  # request index -> its rows, one per sample


@dataclass
class _Row:
    """One sequence in the batch: a sample of request `request` of `order`."""

    order: _Order
    request: int
    prompt_ids: list[int]
    max_new: int
    temperature: float
    top_p: float
    stop: list[str]
    stop_patterns: list[str]
    abandon_on: list[AbandonCheck]
    generator: torch.Generator | None
    matcher: Any | None  # xgrammar.GrammarMatcher of a JSON-schema request
    finished: bool = False
    finish_reason: FinishReason = "length"
    completion_tokens: int = 0
    text: str = ""
    tokens: list[int] = field(default_factory=list)


@dataclass
class _Batch:
    """The rows decoding together, between two steps: their left-padded KV cache and attention mask, each
    row's next position and its next-token logits (from its prefill or from the last step)."""

    rows: list[_Row]
    cache: Any
    attention_mask: torch.Tensor
    next_position: torch.Tensor
    logits: torch.Tensor
    bitmask: torch.Tensor | None = None  # grammar masks, one row per batch row at least


@dataclass
class _Loop:
    """A decode loop: the orders it has taken and not answered yet (first come first served), and its batch."""

    orders: list[_Order] = field(default_factory=list)
    batch: _Batch | None = None


NUCLEUS_GUESS = 1024  # tokens ranked first when looking for a top-p nucleus; a wider one falls back to a full sort


def _draw(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator | None) -> int:
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        # The smallest prefix of the ranked tokens whose mass reaches top_p (always at least the most likely
        # token). Ranking only the first NUCLEUS_GUESS tokens finds the same prefix whenever it ends inside
        # them (a 49k-token sort costs ~30x a top-k), so the draw is the same as with a full sort.
        ranked, order = torch.topk(probs, min(NUCLEUS_GUESS, probs.shape[-1]))
        outside = torch.cumsum(ranked, dim=-1) - ranked >= top_p
        if not bool(outside[-1]) and ranked.shape[-1] < probs.shape[-1]:
            ranked, order = torch.sort(probs, descending=True)
            outside = torch.cumsum(ranked, dim=-1) - ranked >= top_p
        ranked[outside] = 0.0
        probs = torch.zeros_like(probs).scatter_(0, order, ranked)
    return int(torch.multinomial(probs, 1, generator=generator))


def _finish(row: _Row, reason: FinishReason, text: str) -> None:
    row.finished, row.finish_reason, row.completion_tokens, row.text = True, reason, len(row.tokens), text


def _side_by_side(cache: Any) -> bool:
    """Whether the cache's rows can be padded, laid side by side and cut (plain full-attention layers)."""
    return all(type(layer) is DynamicLayer for layer in cache.layers)


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    shape = list(tensor.shape)
    shape[dim] = missing
    return torch.cat([tensor.new_zeros(shape), tensor], dim=dim)


class TransformersBackend(LocalBackend):
    """A Hugging Face causal LM on this process's CPU (or GPU), with xgrammar for JSON-schema answers."""

    supports_json_schema = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config.max_batch_size)
        torch.set_num_threads(config.torch_threads())
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
        self.joined_waves = 0
        self._loop = _Loop()
        self._driving = False  # a caller is driving the loop (or waiting for the engine lock to)
        self._wake = threading.Condition(self._queue_lock)  # notified when a ticket is answered or the loop is free

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

    def generate(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """For each request, in order, its completions or its typed error; never raises for a bad request.
        The requests join the running decode loop at its next step, and the call returns as soon as their
        own rows have ended."""
        if not requests:
            return []
        ticket = _Ticket(list(requests))
        with self._wake:
            self._queue.append(ticket)
        while True:
            with self._wake:
                self._wake.wait_for(lambda: ticket.done.is_set() or not self._driving)
                if ticket.done.is_set():
                    break
                self._driving = True
            try:
                with self._engine_lock:
                    self._drive(ticket)
            finally:
                with self._wake:
                    self._driving = False
                    self._wake.notify_all()
        if ticket.failure is not None:
            raise ticket.failure
        assert ticket.results is not None
        return ticket.results

    def _drive(self, ticket: _Ticket) -> None:
        """Run the shared loop until `ticket` is answered. A failure ends the loop: every caller whose
        requests it had taken sees the exception (as `Backend._serve` does); the queue starts a new loop."""
        loop = self._loop
        try:
            with torch.inference_mode():
                while not ticket.done.is_set():
                    with self._queue_lock:
                        queued, self._queue = self._queue, []
                    loop.orders = [order for order in loop.orders if not order.ticket.done.is_set()]
                    loop.orders.extend(_Order(taken, [None] * len(taken.requests)) for taken in queued)
                    joining = loop.batch is not None
                    if self._admit(loop):
                        self.engine_calls += 1
                        self.joined_waves += joining
                    self._decode_step(loop)
        except BaseException as failure:  # a bug in the loop: every caller in it sees it, none waits forever
            self._loop = _Loop()
            for order in loop.orders:
                if not order.ticket.done.is_set():
                    self._answer(order.ticket, None, failure)

    def _generate_batch(self, requests: list[ChatRequest]) -> list[ChatResult]:
        """One closed engine call that admits nothing else while it runs: what `Backend.generate` would run,
        the batching continuous admission is measured against."""
        order = _Order(_Ticket(list(requests)), [None] * len(requests))
        loop = _Loop([order])
        with torch.inference_mode():
            while not order.ticket.done.is_set():
                self._admit(loop)
                self._decode_step(loop)
        assert order.ticket.results is not None
        return order.ticket.results

    def _admit(self, loop: _Loop) -> bool:
        """Take waiting requests, first come first served, while fewer than `max_batch_size` requests decode,
        and prefill their rows into the batch; False when none was taken. A batch whose cache cannot be laid
        beside another admits nothing until it drains."""
        batch = loop.batch
        if batch is not None and not _side_by_side(batch.cache):
            return False
        decoding = len({(id(row.order), row.request) for row in batch.rows}) if batch is not None else 0
        taken = 0
        rows: list[_Row] = []
        for order in loop.orders:
            while order.admitted < len(order.results) and decoding < self.max_batch_size:
                index = order.admitted
                order.admitted += 1
                taken += 1
                admitted = self._rows(order, index)
                if isinstance(admitted, ChatResult):
                    self._settle(order, index, admitted)
                    continue
                order.rows[index] = admitted
                rows.extend(admitted)
                decoding += 1
        if rows:
            new = _Batch(rows, *self._prefill(rows))
            loop.batch = new if batch is None else self._join(batch, new)
        return taken > 0

    def _rows(self, order: _Order, index: int) -> list[_Row] | ChatResult:
        """The rows of request `index` of `order`, one per sample, or the failed result to answer it with."""
        import xgrammar

        request = order.ticket.requests[index]
        ids = self.admit(request)
        if isinstance(ids, ChatResult):
            return ids
        grammar = None
        if request.json_schema is not None:
            try:
                grammar = self._grammar(request.json_schema)
            except Exception as exc:  # xgrammar raises plain RuntimeError/ValueError for bad schemas
                return ChatResult.failed(InvalidRequestError(f"unusable JSON schema: {exc}"))
        seed = request.seed if request.seed is not None else random.randrange(2**63)
        return [
            _Row(
                order=order,
                request=index,
                prompt_ids=ids,
                max_new=min(request.max_tokens, self.max_model_len - len(ids)),
                temperature=request.temperature,
                top_p=request.top_p,
                stop=request.stop,
                stop_patterns=request.stop_patterns,
                abandon_on=request.abandon_on,
                generator=torch.Generator().manual_seed(sample_seed(seed, sample)) if request.temperature > 0 else None,
                matcher=xgrammar.GrammarMatcher(grammar) if grammar is not None else None,
            )
            for sample in range(request.n)
        ]

    def _settle(self, order: _Order, index: int, result: ChatResult) -> None:
        """Record request `index`'s result; the caller is answered once every one of its requests has one."""
        order.results[index] = result
        answers = [answer for answer in order.results if answer is not None]
        if len(answers) == len(order.results):
            self._answer(order.ticket, answers, None)

    def _answer(self, ticket: _Ticket, results: list[ChatResult] | None, failure: BaseException | None) -> None:
        with self._wake:
            ticket.results, ticket.failure = results, failure
            ticket.done.set()
            self._wake.notify_all()

    def _decode_step(self, loop: _Loop) -> None:
        """One token for every row of the batch. Rows that end leave the batch and the KV cache at once (their
        callers are answered as soon as all their rows have ended); the others run one forward pass."""
        import xgrammar

        batch = loop.batch
        if batch is None:
            return
        rows = batch.rows
        if any(row.matcher is not None for row in rows) and (batch.bitmask is None or len(batch.bitmask) < len(rows)):
            batch.bitmask = xgrammar.allocate_token_bitmask(len(rows), int(self.model.config.vocab_size))
        chosen = self._choose(rows, batch.logits, batch.bitmask)
        keep = []
        for j, row in enumerate(rows):
            if not self._advance(row, chosen[j]):
                keep.append(j)
            elif all(sample.finished for sample in row.order.rows[row.request]):
                self._settle(row.order, row.request, self._result(row.order.rows.pop(row.request)))
        if not keep:
            loop.batch = None
            return
        if len(keep) < len(rows):
            self._select(batch, keep)
            chosen = [chosen[j] for j in keep]
        batch.attention_mask = torch.cat([batch.attention_mask, batch.attention_mask.new_ones((len(keep), 1))], -1)
        batch.logits = self._step(
            torch.tensor(chosen).unsqueeze(-1), batch.attention_mask, batch.next_position.unsqueeze(-1), batch.cache
        )
        batch.next_position = batch.next_position + 1

    @staticmethod
    def _result(rows: list[_Row]) -> ChatResult:
        completions = [Completion(row.text, row.finish_reason, row.completion_tokens) for row in rows]
        return ChatResult(completions=completions, prompt_tokens=len(rows[0].prompt_ids))

    @staticmethod
    def _select(batch: _Batch, keep: list[int]) -> None:
        """Keep only the rows `keep`. The columns that are then padding in every row are cut off, so a loop
        that keeps admitting is never wider than its longest row."""
        index = torch.tensor(keep)
        batch.cache.batch_select_indices(index)
        batch.rows = [batch.rows[j] for j in keep]
        batch.attention_mask, batch.next_position = batch.attention_mask[index], batch.next_position[index]
        if not _side_by_side(batch.cache):
            return
        start = int((batch.attention_mask.cumsum(-1) == 0).sum(-1).min())
        if start:
            batch.attention_mask = batch.attention_mask[:, start:]
            for layer in batch.cache.layers:
                layer.keys, layer.values = layer.keys[:, :, start:], layer.values[:, :, start:]

    @staticmethod
    def _join(batch: _Batch, new: _Batch) -> _Batch:
        """The running batch with `new`'s rows after its own: the narrower KV cache and attention mask are
        padded on the left to the wider one's width (positions are per row and need no change)."""
        width = max(batch.attention_mask.shape[1], new.attention_mask.shape[1])
        layers = [
            (
                torch.cat([_pad_left(old.keys, width, 2), _pad_left(added.keys, width, 2)]),
                torch.cat([_pad_left(old.values, width, 2), _pad_left(added.values, width, 2)]),
            )
            for old, added in zip(batch.cache.layers, new.cache.layers, strict=True)
        ]
        return _Batch(
            rows=batch.rows + new.rows,
            cache=DynamicCache(ddp_cache_data=layers),
            attention_mask=torch.cat(
                [_pad_left(batch.attention_mask, width, 1), _pad_left(new.attention_mask, width, 1)]
            ),
            next_position=torch.cat([batch.next_position, new.next_position]),
            logits=torch.cat([batch.logits, new.logits]),
            bitmask=batch.bitmask,
        )

    def _prefill(self, rows: list[_Row]) -> tuple[Any, torch.Tensor, torch.Tensor, torch.Tensor]:
        """The batch's KV cache (left-padded), attention mask, next positions and first-token logits.

        Each distinct prompt is run once and alone: the n samples of a request share its prefill, and no
        prompt pays for the padding up to the longest one (prefill costs the same per token at any batch size
        on a CPU). The per-prompt caches are then laid side by side, left-padded, for the batched decode."""
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
            if not _side_by_side(cache):
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
        # decoded once per token for every check below, and only for a row that has one
        text = self._decode(row.tokens) if row.stop or row.stop_patterns or row.abandon_on else ""
        if row.stop:
            cut = min((text.find(stop) for stop in row.stop if stop in text), default=-1)
            if cut >= 0:
                _finish(row, "stop", text[:cut])
                return True
        kept = cut_after_patterns(text, row.stop_patterns)
        # a match at the very end may not be one yet ("The answer is 9." before "5."): one more token says
        if kept is not None and (len(kept) < len(text) or len(row.tokens) >= row.max_new):
            _finish(row, "stop", kept)
            return True
        failed = abandoned_at(text, row.abandon_on)
        if failed is not None:
            _finish(row, "abandoned", failed)
            return True
        if len(row.tokens) >= row.max_new:
            _finish(row, "length", text or self._decode(row.tokens))
            return True
        return False

    def _decode(self, tokens: list[int]) -> str:
        return self.tokenizer.decode(tokens, skip_special_tokens=True)
