"""The pydantic schema of every prefsmith config: models, roles, sampling, game, tools, storage, Ray,
training.

Fields marked with `execution()` only change how a run executes (concurrency, batch sizes, addresses,
memory); `config_hash` leaves them out, so changing them never invalidates data already played.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

_EXECUTION_KEY = "prefsmith_execution"


def execution(default: Any, description: str, **kwargs: Any) -> Any:
    """A field that changes how a run executes but never what it produces (excluded from `config_hash`)."""
    return Field(default, description=description, json_schema_extra={_EXECUTION_KEY: True}, **kwargs)


def is_execution_field(model: type[BaseModel], name: str) -> bool:
    extra = model.model_fields[name].json_schema_extra
    return isinstance(extra, dict) and bool(extra.get(_EXECUTION_KEY))


class Strict(BaseModel):
    """Base of every config section: unknown keys are errors, not silently ignored typos."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    """One model and the engine that serves it; roles refer to it by its key in `models`."""

    name: str = Field(
        "smollm2-135m-instruct",
        description="A prefsmith model name (`prefsmith models list`), an HF model id or a local path.",
    )
    backend: Literal["transformers", "vllm", "openai"] = Field(
        "transformers", description="Engine that serves the model."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="Weights dtype.")
    max_model_len: int | None = Field(None, gt=0, description="Context window; None = the model's own.")
    base_url: str | None = execution(None, "OpenAI-compatible endpoint (backend=openai).")
    api_key_env: str | None = execution(
        None, "Name of the environment variable holding the API key; the key itself is never stored."
    )
    tensor_parallel_size: int = execution(1, "vLLM tensor parallel degree.", ge=1)
    gpu_memory_utilization: float = execution(0.85, "vLLM share of GPU memory.", gt=0, le=1)
    enforce_eager: bool = execution(False, "vLLM: disable CUDA graphs (required on the CPU build).")
    num_gpus: float = execution(0, "GPUs the engine actor reserves.", ge=0)
    num_cpus: float = execution(1, "CPUs the engine actor reserves.", ge=0)
    threads: int | None = execution(
        None,
        "torch intra-op threads of the engine (transformers backend); None = $OMP_NUM_THREADS if set, else every "
        "CPU the engine's process may run on.",
        ge=1,
    )
    max_batch_size: int = execution(32, "Most requests one engine call batches together.", ge=1)
    vllm_engine: Literal["async", "sync"] = execution(
        "async",
        "backend=vllm: 'async' adds each request to the running engine as it arrives (continuous batching); "
        "'sync' runs each batch as one LLM.generate call.",
    )
    replicas: int = execution(
        1, "Engine actors serving this model in a synthesis run; each call goes to the least loaded.", ge=1
    )
    resources: dict[str, float] = execution(
        {}, "Custom Ray resources each engine actor reserves (pins it to nodes that offer them).",
    )
    kv_cache_gb: int = execution(1, "vLLM CPU build: KV cache GiB, unless VLLM_CPU_KVCACHE_SPACE is set.", ge=1)
    request_timeout_s: float = execution(120.0, "backend=openai: timeout of one HTTP request.", gt=0)
    max_retries: int = execution(
        3, "backend=openai: retries (with backoff) after 429/5xx/connection errors.", ge=0
    )
    max_concurrency: int = execution(8, "backend=openai: HTTP requests in flight at once.", ge=1)

    def torch_threads(self) -> int:
        """The engine's torch threads: `threads`, else $OMP_NUM_THREADS, else every CPU this process may use.
        (An engine actor is given `threads` by the synthesizer: Ray sets OMP_NUM_THREADS in its workers.)"""
        if self.threads is not None:
            return self.threads
        return omp_threads() or usable_cpus()


def omp_threads() -> int | None:
    """$OMP_NUM_THREADS when it names a positive count."""
    named = os.environ.get("OMP_NUM_THREADS", "").strip()
    return int(named) if named.isdigit() and int(named) > 0 else None


def usable_cpus() -> int:
    """The CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class SamplingConfig(Strict):
    temperature: float = Field(0.8, ge=0, description="0 means greedy.")
    top_p: float = Field(0.95, gt=0, le=1)
    max_tokens: int = Field(256, gt=0, description="Most new tokens per completion.")
    seed: int = Field(0, description="Base seed; episode and candidate seeds derive from it.")


class RolesConfig(Strict):
    """Which model (a key of `models`) plays each role."""

    target: str = "default"
    judge: str = "default"
    reward: str = "default"
    optimizer: str = "default"


class GameConfig(Strict):
    """The Anyprefer game (docs/methods.md, "Anyprefer")."""

    candidates: int = Field(5, ge=2, description="C: candidates the target samples per round.")
    max_rounds: int = Field(3, ge=1, description="R: rounds before an episode gives up.")
    accept_threshold: int = Field(8, ge=1, le=10, description="τ: reward score that accepts a pair.")
    parse_retries: int = Field(2, ge=0, description="Retries of an unparseable structured answer.")
    verdicts_decide: bool = Field(
        True,
        description="When every candidate has a tool verdict, the verdicts rank them (the judge model is not "
        "asked for scores it cannot overturn; all wrong is a tie), and a verified pair (chosen passes, rejected "
        "fails) is accepted without the reward model. Off: the judge and the reward model see every pair.",
    )
    max_candidates: int | None = Field(
        None,
        ge=2,
        description="Most candidates one round samples, in steps: while the tool verdicts do not yet mix (all pass "
        "or all fail) and the prompt's estimated pass rate says the next step likely brings the missing side, "
        "another step is sampled. None = `candidates` (one step, stepped sampling off).",
    )
    step_candidates: int | None = Field(
        None, ge=1, description="Candidates per further step; None = `candidates`."
    )
    step_threshold: float = Field(
        0.3,
        gt=0,
        lt=1,
        description="Sample another step when P(at least one candidate of the missing side in it) under the "
        "prompt's posterior pass rate (Beta(1, 1) prior, or the pooled one) exceeds this (Beta(1, 1) with no "
        "earlier samples: C agreeing verdicts give C/(2C+1), about 0.43; 2C give about 0.3).",
    )
    pooled_prior: bool = Field(
        False,
        description="Empirical Bayes: each prompt's pass-rate prior has the mean pass rate the target model has shown "
        "on the run's other prompts so far (the episodes this process plays), weighing `prior_strength` samples, "
        "instead of Beta(1, 1). A family the model rarely solves (or always does) then stops sampling a prompt "
        "whose first candidates agree sooner. Step and round decisions then depend on the order episodes finish.",
    )
    prior_strength: Annotated[float, Field(gt=0)] | Literal["auto"] = Field(
        2.0,
        description="The pooled prior's weight in samples (2 with no pooled verdicts yet: Beta(1, 1)). `auto`: "
        "fitted to how far the pass rates of the run's prompts spread (the weight under which their verdicts are "
        "likeliest; 2 until 8 prompts have verdicts).",
    )
    round_threshold: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="End an episode whose tool verdicts all agree (all failed, or all passed) before its last round "
        "when P(a candidate of the missing side among the next round's `candidates`) under the prompt's posterior "
        "is at most this: stored as out_of_reach or mastered once `retire_after` samples are reached, else as "
        "gave_up saying why. None: every round is played.",
    )
    step_rule: Literal["chance", "value"] = Field(
        "chance",
        description="What decides another step and another round while a prompt's verdicts agree. `chance`: "
        "P(the missing side) above `step_threshold` / `round_threshold`. `value`: the expected verified pairs "
        "of the best way on (steps of 1 to `step_candidates` up to the round's budget; another round from its "
        "first `candidates`) must pay for its candidates at the pairs per candidate that the family's prior "
        "says a fresh prompt gives, so samples go where a pair is likeliest per token; the thresholds are then "
        "unused. Best with `pooled_prior` and `prior_strength: auto`.",
    )
    prior_from_history: bool = Field(
        True,
        description="Start each prompt's pass-rate estimate (stepped sampling, retiring) from the verdicts earlier "
        "runs of it by the same target model stored. False: from this run's own candidates alone, so a run's step "
        "decisions do not depend on what else the database holds.",
    )
    retire_after: int | None = Field(
        None,
        ge=1,
        description="N: a prompt whose N samples with tool verdicts by the target model (this run's and earlier "
        "runs') all passed is retired as `mastered` at once; one whose samples all failed when its rounds are "
        "spent (N at least) as `out_of_reach`. Retired prompts are skipped by `refresh` and the next `iterate` "
        "round. None: off (such an episode gives up, as without the setting).",
    )
    stop_at_final_answer: bool = Field(
        False,
        description="End a candidate right after the final form its prompt's family asks for (arithmetic: "
        "'The answer is N.'), where the family defines one, instead of spending max_tokens after it.",
    )
    abandon_false_steps: bool = Field(
        False,
        description="End a candidate as soon as it writes a false arithmetic statement that no continuation can "
        "change (one a word follows), where the calculator checks its steps: that candidate fails the steps check "
        "whatever it writes next, so its later tokens are not spent. Its text is kept up to the false statement, "
        "finish reason `abandoned`. Only where `calculator` is among tools.enabled.",
    )

    @model_validator(mode="after")
    def _max_at_least_candidates(self) -> GameConfig:
        if self.max_candidates is not None and self.max_candidates < self.candidates:
            raise ValueError(
                f"game.max_candidates ({self.max_candidates}) must be at least game.candidates ({self.candidates})"
            )
        return self


class ToolsConfig(Strict):
    enabled: list[str] = Field(
        default_factory=lambda: ["reference_answer", "calculator"],
        description="Tools the judge may call (see `prefsmith tools list`).",
    )
    selection: Literal["configured", "model"] = Field(
        "configured",
        description="'configured': the judge uses every enabled tool that applies to the input (small models); "
        "'model': the judge model picks among them from their schemas.",
    )
    retrieval_corpus: str | None = Field(
        None, description="Folder or JSONL file the retrieval tool searches."
    )
    labor_table: str | None = Field(None, description="BLS CPS table 11 file for the labor statistics tool.")
    # Bounds are the sandbox's own (tools/jail.py MAX_*/MIN_*): a setting outside them is refused at load time.
    sandbox_timeout_s: float = Field(
        5.0, gt=0, le=60, description="Wall-clock limit of one sandboxed execution (CPU limit: its whole seconds)."
    )
    sandbox_memory_mb: int = Field(512, ge=32, le=8192, description="Address-space limit of one sandboxed execution.")
    sandbox_processes: int = Field(0, ge=0, le=64, description="Processes sandboxed code may start besides itself.")
    sandbox_scratch_mb: int = Field(
        32, ge=1, le=1024, description="Size of the sandbox's only writable place (a private tmpfs)."
    )
    sandbox_python: str | None = execution(
        None,
        "Interpreter that runs sandboxed code (standard library only); None = the one running prefsmith when "
        "the sandbox user can run it, else the system's python3.",
    )
    sandbox_allow_weaker_isolation: bool = execution(
        False,
        "Run sandboxed code even where the machine lacks a kernel layer (bubblewrap, namespaces, seccomp); "
        "the evidence lists what was missing. Off: the sandbox refuses to run code unprotected.",
    )
    call_timeout_s: float = execution(
        120.0,
        "Bound on one tool call, waiting for a Ray worker included; a call that takes longer is cancelled and "
        "its evidence says so.",
        gt=0,
    )

    @model_validator(mode="after")
    def _call_outlasts_sandbox(self) -> ToolsConfig:
        if self.call_timeout_s <= self.sandbox_timeout_s:
            raise ValueError(
                f"tools.call_timeout_s ({self.call_timeout_s:g}) must exceed tools.sandbox_timeout_s "
                f"({self.sandbox_timeout_s:g}): a sandboxed call would be cut off before its own limit"
            )
        return self


class PromptSourceConfig(Strict):
    """A prompt source: a built-in set or a file (JSONL, CSV, Parquet) or HF datasets folder."""

    builtin: str | None = Field(None, description="Name of a built-in prompt set.")
    path: str | None = Field(None, description="File or folder with prompts.")
    # An execution knob: a file in HumanEval's format is recognised by its rows alone, so naming the format
    # changes no prompt; it only turns a file that is not in it into an error.
    format: Literal["humaneval"] | None = execution(
        None,
        "The file's format when it is not plain prompts: 'humaneval' (rows of prompt, test, entry_point; "
        "recognised by those fields without it). Each becomes a coding prompt whose tests the sandbox runs.",
    )
    limit: int | None = Field(None, gt=0, description="Use at most this many prompts from the source.")
    seed: int = Field(0, description="Seed of generated built-in sets.")
    split: Literal["train", "heldout", "all"] | None = Field(
        None,
        description="Which problems to use: 'heldout' is a fixed fifth of the problems (chosen by a hash of each "
        "one) that `prefsmith eval task` scores models on and synthesis never plays; 'train' the rest; 'all' both. "
        "Default: 'train' for built-in sets, 'all' for files.",
    )

    @model_validator(mode="after")
    def _one_of(self) -> PromptSourceConfig:
        if (self.builtin is None) == (self.path is None):
            raise ValueError("give exactly one of 'builtin' or 'path'")
        if self.format is not None and self.path is None:
            raise ValueError(f"'format: {self.format}' is the format of a file: give it with 'path'")
        if self.split is None:  # resolved here, so the run's stored config says which split it played
            self.split = "train" if self.builtin is not None else "all"
        return self


class StorageConfig(Strict):
    url: str | None = execution(
        None, "SQLAlchemy URL; None = $PREFSMITH_DB, else a SQLite file under $PREFSMITH_HOME."
    )
    retry_s: float = execution(
        120.0,
        "How long a write that fails for a passing reason (a dropped connection, a restarting server) is retried "
        "before the run stops as interrupted.",
        gt=0,
    )
    lease_ttl_s: float = execution(
        60.0,
        "A run's lease lasts this long after its synthesizer's last renewal (renewed every third of it): a "
        "synthesizer that vanished is taken over this long after.",
        ge=2,
    )


class RayConfig(Strict):
    address: str | None = execution(None, "Ray cluster address; None = $RAY_ADDRESS, else a local Ray.")
    num_cpus: int | None = execution(None, "CPUs of a local Ray; None = all.", ge=1)
    episodes_in_flight: int = execution(16, "K: episodes played concurrently.", ge=1)
    episode_workers: int = execution(
        0,
        "Ray actors that play the K episodes (each an equal share); 0 plays them as threads of the driver. "
        "Set it on a cluster: the driver then only hands prompts out and writes the rounds the workers "
        "collect, in one transaction per tick.",
        ge=0,
    )
    episode_worker_cpus: float = execution(0.25, "CPUs each episode worker reserves.", ge=0)
    episode_worker_resources: dict[str, float] = execution(
        {}, "Custom Ray resources each episode worker reserves (pins workers to nodes that offer them)."
    )
    episode_worker_restarts: int = execution(
        3,
        "Episode workers that may die or hang in one run and be replaced (their episodes play again from their "
        "last stored round); beyond, the run stops and a rerun resumes it.",
        ge=0,
    )
    engine_restarts: int = execution(
        3, "Restarts of a dead or hung engine allowed per engine_restart_window_s; beyond, the run stops.", ge=0
    )
    engine_restart_window_s: float = execution(600.0, "The window engine_restarts counts in.", gt=0)


class TrainingConfig(Strict):
    """A training job (`configs/train_*.yaml`): settings shared by the trainers. `extra` may set any field of
    the trainer's TRL config class (`SparsePOConfig`, `DebiasConfig`, `DPOConfig`) or of TRL's `ModelConfig`
    (dtype, LoRA); training/trainer_config.py builds and checks them, and picks the device unless set."""

    model: str = Field("smollm2-135m-instruct", description="Policy model (name, HF id or path).")
    learning_rate: float = Field(5e-7, gt=0)
    beta: float = Field(0.1, gt=0, description="Preference loss temperature β.")
    num_train_epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, description="Stop after this many optimizer steps (-1: epochs decide).")
    per_device_train_batch_size: int = execution(2, "Pairs per device per step.", ge=1)
    gradient_accumulation_steps: int = execution(1, "Micro-batches per optimizer step.", ge=1)
    max_length: int | None = Field(512, gt=0, description="Truncate prompt+completion to this many tokens.")
    seed: int = 0
    extra: dict[str, Any] = Field(
        default_factory=dict, description="Trainer-specific settings: fields of its TRL config or of ModelConfig."
    )


class EvaluationConfig(Strict):
    """What `prefsmith iterate` measures each round on (its --eval-* options override these)."""

    prompts: str | None = Field(
        None, description="Held-out prompts: builtin:arithmetic, builtin:instructions, or a file; None = arithmetic."
    )
    limit: int | None = Field(None, gt=0, description="Prompts evaluated; None = 50.")
    max_tokens: int | None = Field(None, gt=0, description="Answer budget; None = 64 (arithmetic), 512 (instructions).")
    backend: Literal["auto", "vllm", "transformers"] = Field(
        "auto", description="Instruction prompts: the engine of the greedy answers (auto = vLLM where installed)."
    )


class SynthesisConfig(Strict):
    """Everything a synthesis run needs. `config_hash` identifies the data it produces."""

    models: dict[str, ModelConfig] = Field(default_factory=lambda: {"default": ModelConfig()})
    roles: RolesConfig = Field(default_factory=RolesConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    game: GameConfig = Field(default_factory=GameConfig)
    tools: ToolsConfig = Field(default_factory=ToolsConfig)
    prompts: list[PromptSourceConfig] = Field(
        default_factory=lambda: [PromptSourceConfig(builtin="arithmetic")]
    )
    storage: StorageConfig = Field(default_factory=StorageConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    # how the loop measures its rounds, not what synthesis produces: outside config_hash
    evaluation: EvaluationConfig = Field(
        default_factory=EvaluationConfig, json_schema_extra={_EXECUTION_KEY: True},
        description="What `prefsmith iterate` evaluates each round on.",
    )

    @model_validator(mode="after")
    def _roles_name_models(self) -> SynthesisConfig:
        for role, key in self.roles.model_dump().items():
            if key not in self.models:
                known = ", ".join(sorted(self.models)) or "none"
                raise ValueError(
                    f"roles.{role} names model {key!r}, which is not under 'models' (have: {known})"
                )
        if any(source.builtin == "instructions" for source in self.prompts) and (
            "instruction_checks" not in self.tools.enabled
        ):
            # Resolved here, so the run's stored config names the tool that verified its pairs.
            self.tools.enabled = [*self.tools.enabled, "instruction_checks"]
        for i, source in enumerate(self.prompts):
            if source.split == "heldout":
                raise ValueError(
                    f"prompts[{i}].split is 'heldout': those problems are kept for `prefsmith eval task`, and "
                    "synthesis never plays them (use 'train', or 'all' to include them knowingly)"
                )
        return self
