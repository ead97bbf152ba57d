"""SparsePO (docs/methods.md): token-masked TDPO-v1 as a subclass of TRL's `DPOTrainer`, its config, and the
trainer of the one trainer interface that builds it.

Built and tested against TRL 1.16 (`trl>=1.10,<1.17`), whose only loss hook is `DPOTrainer._compute_loss`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, get_args

import torch
import torch.nn.functional as F
from accelerate.utils import is_peft_model
from torch import nn
from trl import DPOConfig, DPOTrainer
from trl.models.utils import disable_gradient_checkpointing
from trl.trainer.utils import use_adapter

from training.masks import MaskInit, TokenMaskNetworks, activation_mask, save_mask_config, saved_masks_exist
from training.trainer import PreferenceTrainer

TRL_VERSION_BUILT_AGAINST = "1.16.0"
MaskType = Literal["learned", "activation", "ones"]
MASK_TYPES: tuple[str, ...] = get_args(MaskType)
MASK_INITS: tuple[str, ...] = get_args(MaskInit)


@dataclass
class SparsePOConfig(DPOConfig):
    """`DPOConfig` plus the SparsePO knobs. `beta` is the β of −log σ(β(u − δ)).

    DPO-only knobs that change the loss (`loss_type`, `ld_alpha`, `f_divergence_type`, `use_weighting`,
    `precompute_ref_log_probs`) are rejected: the SparsePO objective replaces them. A few run defaults
    differ from DPOConfig's, for checkpointed runs of small models (configs/train_sparsepo.yaml).
    """

    # Run defaults overridden from DPOConfig
    logging_steps: float = field(default=1, metadata={"help": "Log the loss and mask metrics every this many steps."})
    save_steps: float = field(default=50, metadata={"help": "Write a checkpoint every this many optimizer steps."})
    save_total_limit: int | None = field(default=2, metadata={"help": "Checkpoints kept; older ones are deleted."})

    mask_type: MaskType = field(
        default="learned",
        metadata={
            "help": "'learned' (SparsePO mask network on the reference hidden states), 'activation' (MaPO, "
            "no parameters) or 'ones' (every response token weighs 1: TDPO-v1, or DPO without the KL term)."
        },
    )
    mask_on_reward: bool = field(
        default=True,
        metadata={"help": "Weigh the reward term u by the mask m_u (else m_u ≡ 1 on the response)."},
    )
    mask_on_kl: bool = field(
        default=True, metadata={"help": "Weigh the KL term δ by the mask m_d (else m_d ≡ 1 on the response)."}
    )
    use_kl_term: bool = field(
        default=True,
        metadata={"help": "Include the token-level KL term δ (TDPO-v1). False leaves the masked DPO objective."},
    )
    rw_kl_independent: bool = field(
        default=False,
        metadata={"help": "Learned masks: two networks (m_u, m_d) instead of one common network."},
    )
    l1_u: float = field(default=0.0, metadata={"help": "λ_u: L1 penalty on the reward mask m_u (summed per pair)."})
    l1_d: float = field(default=0.0, metadata={"help": "λ_d: L1 penalty on the KL mask m_d (summed per pair)."})
    mask_weight_decay: float = field(
        default=0.01,
        metadata={"help": "Weight decay of the mask network parameters (their own param group)."},
    )
    mask_learning_rate: float | None = field(
        default=None, metadata={"help": "Learning rate of the mask networks; None = `learning_rate`."}
    )
    mask_init: MaskInit = field(
        default="ones",
        metadata={
            "help": "'ones': per-layer bias 1, mixer 1/L, so the mask starts ≈ 1; 'normal': the authors' "
            "N(0, 0.02) init, which can leave the mixer ReLU dead (zero gradients)."
        },
    )

    def __post_init__(self) -> None:
        if self.mask_type not in MASK_TYPES:
            raise ValueError(f"mask_type must be one of {', '.join(MASK_TYPES)}; got {self.mask_type!r}")
        if self.mask_init not in MASK_INITS:
            raise ValueError(f"mask_init must be one of {', '.join(MASK_INITS)}; got {self.mask_init!r}")
        for name in ("l1_u", "l1_d", "mask_weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0; got {getattr(self, name)}")
        if self.mask_learning_rate is not None and self.mask_learning_rate <= 0:
            raise ValueError(f"mask_learning_rate must be > 0; got {self.mask_learning_rate}")
        if self.precompute_ref_log_probs:
            raise ValueError(
                "precompute_ref_log_probs is not supported by SparsePO: every step needs the reference "
                "model's hidden states (for the masks) and full-vocabulary distributions (for the token KL)"
            )
        loss_types = [self.loss_type] if isinstance(self.loss_type, str) else list(self.loss_type)
        if loss_types != ["sigmoid"] or self.loss_weights not in (None, [1.0]):
            raise ValueError(f"loss_type must be 'sigmoid' for SparsePO (its own objective); got {self.loss_type!r}")
        if self.ld_alpha is not None or self.f_divergence_type != "reverse_kl" or self.use_weighting:
            raise ValueError("ld_alpha, f_divergence_type and use_weighting are DPO options SparsePO does not use")
        super().__post_init__()


@dataclass
class SparsePOTerms:
    """The SparsePO loss of a batch of P pairs and the per-pair pieces the metrics need."""

    loss: torch.Tensor  # scalar: mean over pairs of the per-pair loss
    per_pair_loss: torch.Tensor  # (P,)
    l1: torch.Tensor  # (P,): the L1 part of the per-pair loss
    reward_chosen: torch.Tensor  # (P,): β Σ_t m_u(w,t) r_t(w)
    reward_rejected: torch.Tensor  # (P,)
    kl_chosen: torch.Tensor  # (P,): Σ_t m_d(w,t) KL_t(w)
    kl_rejected: torch.Tensor  # (P,)


def _pair_sum(mask: torch.Tensor) -> torch.Tensor:
    """‖m(w)‖₁ + ‖m(l)‖₁ per pair, for a (2P, T) non-negative mask with the chosen rows first."""
    return mask.sum(dim=1).view(2, -1).sum(dim=0)


def sparsepo_loss(
    policy_logps: torch.Tensor,
    ref_logps: torch.Tensor,
    per_token_kl: torch.Tensor,
    m_u: torch.Tensor,
    m_d: torch.Tensor,
    *,
    beta: float,
    l1_u: float,
    l1_d: float,
    use_kl_term: bool,
) -> SparsePOTerms:
    """The spec's per-pair loss −log σ(β(u − δ)) + λ_u ‖m_u‖₁ + λ_d ‖m_d‖₁, averaged over pairs.

    Every input is (2P, T) with the P chosen rows first, and zero outside response tokens (the masks carry
    that zero, so prompt and padding never count). Token terms are summed, not averaged.
    """
    log_ratio = policy_logps - ref_logps
    masked_reward = (m_u * log_ratio).sum(dim=1)
    reward_chosen, reward_rejected = masked_reward.chunk(2, dim=0)
    u = reward_chosen - reward_rejected
    masked_kl = (m_d * per_token_kl).sum(dim=1)
    kl_chosen, kl_rejected = masked_kl.chunk(2, dim=0)
    delta = kl_rejected - kl_chosen if use_kl_term else torch.zeros_like(u)
    preference = -F.logsigmoid(beta * (u - delta))
    # Masks are non-negative, so the L1 norm is a plain sum; chosen and rejected of a pair both count.
    l1 = l1_u * _pair_sum(m_u)
    if use_kl_term:
        l1 = l1 + l1_d * _pair_sum(m_d)
    per_pair = preference + l1
    return SparsePOTerms(
        loss=per_pair.mean(),
        per_pair_loss=per_pair,
        l1=l1,
        reward_chosen=beta * reward_chosen,
        reward_rejected=beta * reward_rejected,
        kl_chosen=kl_chosen,
        kl_rejected=kl_rejected,
    )


def token_statistics(
    policy_logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, response: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-token log π_θ(y_t), log π_ref(y_t) and full-vocabulary KL(π_ref ‖ π_θ): (B, T), 0 off-response.

    `policy_logits[:, t]` predicts `labels[:, t]`. Only response positions are projected through
    log-softmax (in fp32), which keeps the (tokens × vocabulary) tensors as small as the response.
    """
    keep = response.bool()
    policy = F.log_softmax(policy_logits[keep].float(), dim=-1)
    ref = F.log_softmax(ref_logits[keep].float(), dim=-1)
    targets = labels[keep].unsqueeze(-1)
    policy_token = policy.gather(-1, targets).squeeze(-1)
    ref_token = ref.gather(-1, targets).squeeze(-1)
    kl = (ref.exp() * (ref - policy)).sum(dim=-1)
    zeros = torch.zeros(keep.shape, dtype=policy.dtype, device=policy.device)
    return (
        zeros.masked_scatter(keep, policy_token),
        zeros.masked_scatter(keep, ref_token),
        zeros.masked_scatter(keep, kl),
    )


class SparsePOTrainer(DPOTrainer):
    """TRL's `DPOTrainer` with the SparsePO objective in `_compute_loss`.

    Learned mask networks live beside the policy (not inside it), so the policy stays a plain HF / PEFT
    model; they get their own optimizer param group, are written next to every saved model and checkpoint
    (`sparsepo_masks/masks.safetensors`), reloaded on resume, and their gradients are averaged across processes.
    """

    _tag_names = ["trl", "dpo", "sparsepo", "prefsmith"]
    _name = "SparsePO"
    args: SparsePOConfig  # __init__ refuses any other config

    def __init__(
        self,
        model: Any,
        ref_model: Any = None,
        args: SparsePOConfig | None = None,
        *,
        mask_networks: TokenMaskNetworks | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(args, SparsePOConfig):
            raise TypeError(f"SparsePOTrainer needs a SparsePOConfig, got {type(args).__name__}")
        if args.precompute_ref_log_probs:
            raise ValueError("precompute_ref_log_probs is not supported by SparsePO")
        super().__init__(model=model, ref_model=ref_model, args=args, **kwargs)
        self.mask_networks: TokenMaskNetworks | None = None
        if args.mask_type == "learned":
            if mask_networks is None:
                text_config = self.accelerator.unwrap_model(self.model).config.get_text_config()
                mask_networks = TokenMaskNetworks(
                    text_config.num_hidden_layers,
                    text_config.hidden_size,
                    independent=args.rw_kl_independent,
                    init=args.mask_init,
                )
            elif mask_networks.independent != args.rw_kl_independent:
                raise ValueError("the given mask networks do not match rw_kl_independent")
            self.mask_networks = mask_networks.to(self.accelerator.device)

    # --- optimisation -------------------------------------------------------------------------------------

    def create_optimizer(self, model: nn.Module | None = None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        if self.mask_networks is not None:
            present = {id(p) for group in optimizer.param_groups for p in group["params"]}
            params = [p for p in self.mask_networks.parameters() if id(p) not in present]
            if params:
                optimizer.add_param_group(
                    {
                        "params": params,
                        "weight_decay": self.args.mask_weight_decay,
                        "lr": self.args.mask_learning_rate or self.args.learning_rate,
                    }
                )
        return optimizer

    def training_step(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        loss = super().training_step(*args, **kwargs)
        # The mask networks sit outside the DDP-wrapped policy, so their gradients are averaged here.
        if self.mask_networks is not None and self.accelerator.num_processes > 1:
            for param in self.mask_networks.parameters():
                if param.grad is not None:
                    param.grad = self.accelerator.reduce(param.grad, reduction="mean")
        return loss

    # --- saving and resuming ------------------------------------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        super()._save(output_dir, state_dict=state_dict)
        if not self.args.should_save:
            return
        target = output_dir if output_dir is not None else self.args.output_dir
        assert target is not None  # TrainingArguments.__post_init__ fills output_dir in
        save_mask_config(target, self.mask_description())
        if self.mask_networks is not None:
            self.mask_networks.save(target)

    def mask_description(self) -> dict[str, Any]:
        """What `prefsmith inspect masks` needs to recompute this trainer's masks from a saved model."""
        unwrapped = self.accelerator.unwrap_model(self.model)
        reference: Any = self.ref_model if self.ref_model is not None else unwrapped
        if is_peft_model(reference):
            reference = reference.get_base_model()
        return {
            "mask_type": self.args.mask_type,
            "mask_on_reward": self.args.mask_on_reward,
            "mask_on_kl": self.args.mask_on_kl,
            "use_kl_term": self.args.use_kl_term,
            "rw_kl_independent": self.args.rw_kl_independent,
            "reference_model": self.accelerator.unwrap_model(reference).config._name_or_path,
            "networks": self.mask_networks.describe() if self.mask_networks is not None else None,
        }

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        if self.mask_networks is not None:
            if not saved_masks_exist(resume_from_checkpoint):
                raise FileNotFoundError(f"{resume_from_checkpoint} holds no SparsePO masks to resume from")
            loaded = TokenMaskNetworks.from_pretrained(Path(resume_from_checkpoint))
            self.mask_networks.load_state_dict(loaded.state_dict())

    # --- the loss -----------------------------------------------------------------------------------------

    def _reference_outputs(self, model_kwargs: dict[str, Any]) -> Any:
        """Reference forward with ordinary logits and every layer's hidden states (no fused LM head)."""
        # HF types both loosely (optional, or a JSON string); __init__ has set the model and parsed the kwargs.
        policy: Any = self.model
        checkpointing_kwargs: Any = self.args.gradient_checkpointing_kwargs
        with torch.no_grad(), disable_gradient_checkpointing(policy, checkpointing_kwargs):
            if is_peft_model(policy) and self.ref_model is None:
                unwrapped = self.accelerator.unwrap_model(policy)
                with use_adapter(unwrapped, adapter_name="ref" if "ref" in unwrapped.peft_config else None):
                    return policy(**model_kwargs, output_hidden_states=True)
            reference: Any = self.ref_model
            return reference(**model_kwargs, output_hidden_states=True)

    def token_masks(
        self, hidden_states: list[torch.Tensor], response: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(m_u, m_d), each (B, T) and exactly zero outside `response`; one tensor object when shared."""
        keep = response.to(torch.float32)
        if self.args.mask_type == "ones":
            m_u = m_d = keep
        elif self.args.mask_type == "activation":
            m_u = m_d = activation_mask(hidden_states, response)
        else:
            assert self.mask_networks is not None
            learned_u, learned_d = self.mask_networks(hidden_states)
            m_u = learned_u * keep
            m_d = m_u if learned_d is learned_u else learned_d * keep
        if not self.args.mask_on_reward:
            m_u = keep
        if not self.args.mask_on_kl:
            m_d = keep
        return m_u, m_d

    def _l1_weights(self, m_u: torch.Tensor, m_d: torch.Tensor) -> tuple[float, float]:
        """λ_u, λ_d as applied: only on masked terms, halved when one mask serves both (as the authors do)."""
        l1_u = self.args.l1_u if self.args.mask_on_reward else 0.0
        l1_d = self.args.l1_d if (self.args.mask_on_kl and self.args.use_kl_term) else 0.0
        if m_u is m_d and l1_u and l1_d:
            return l1_u / 2, l1_d / 2
        return l1_u, l1_d

    def _compute_loss(self, model: nn.Module, inputs: dict[str, torch.Tensor], return_outputs: bool) -> Any:
        policy: Any = self.model
        mode = "train" if policy.training else "eval"
        model_kwargs: dict[str, Any] = {
            k: v for k, v in inputs.items() if k not in {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}
        }
        model_kwargs["use_cache"] = False
        # Position t's logits predict token t+1, so the response mask and labels are shifted by one.
        response = inputs["completion_mask"][:, 1:].bool()
        labels = inputs["input_ids"][:, 1:]
        seq_len = response.size(1)

        policy_outputs = model(**model_kwargs)
        ref_outputs = self._reference_outputs(model_kwargs)
        # Slicing from the end drops virtual tokens that prompt-learning PEFT prepends.
        policy_logits = policy_outputs.logits[:, -seq_len - 1 : -1]
        ref_logits = ref_outputs.logits[:, -seq_len - 1 : -1]
        hidden_states = [h[:, -seq_len - 1 : -1] for h in ref_outputs.hidden_states[1:]]

        policy_logps, ref_logps, per_token_kl = token_statistics(policy_logits, ref_logits, labels, response)
        m_u, m_d = self.token_masks(hidden_states, response)
        l1_u, l1_d = self._l1_weights(m_u, m_d)
        terms = sparsepo_loss(
            policy_logps,
            ref_logps,
            per_token_kl,
            m_u,
            m_d,
            beta=self.beta,
            l1_u=l1_u,
            l1_d=l1_d,
            use_kl_term=self.args.use_kl_term,
        )
        self._log_sparsepo_metrics(mode, inputs, response, policy_logps, ref_logps, per_token_kl, m_u, m_d, terms)
        return (terms.loss, policy_outputs) if return_outputs else terms.loss

    @torch.no_grad()
    def _log_sparsepo_metrics(
        self,
        mode: str,
        inputs: dict[str, torch.Tensor],
        response: torch.Tensor,
        policy_logps: torch.Tensor,
        ref_logps: torch.Tensor,
        per_token_kl: torch.Tensor,
        m_u: torch.Tensor,
        m_d: torch.Tensor,
        terms: SparsePOTerms,
    ) -> None:
        gather = self.accelerator.gather
        metrics = self._metrics[mode]

        def mean(name: str, value: torch.Tensor) -> None:
            metrics[name].append(gather(value.detach().float()).mean().item())

        if mode == "train":
            tokens = gather(inputs["attention_mask"].sum()).sum().item()
            self._total_train_tokens += tokens // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]

        # TRL's names, unmasked: β Σ_t r_t, so runs compare directly with plain DPO.
        logps_chosen, logps_rejected = policy_logps.sum(dim=1).chunk(2)
        ratio_chosen, ratio_rejected = (self.beta * (policy_logps - ref_logps).sum(dim=1)).chunk(2)
        mean("rewards/chosen", ratio_chosen)
        mean("rewards/rejected", ratio_rejected)
        mean("rewards/margins", ratio_chosen - ratio_rejected)
        mean("rewards/accuracies", (ratio_chosen > ratio_rejected).float())
        mean("logps/chosen", logps_chosen)
        mean("logps/rejected", logps_rejected)

        mean("masked_rewards/chosen", terms.reward_chosen)
        mean("masked_rewards/rejected", terms.reward_rejected)
        mean("masked_rewards/margins", terms.reward_chosen - terms.reward_rejected)
        mean("masked_rewards/accuracies", (terms.reward_chosen > terms.reward_rejected).float())
        kl_chosen, kl_rejected = per_token_kl.sum(dim=1).chunk(2)
        mean("kl/chosen", kl_chosen)
        mean("kl/rejected", kl_rejected)
        mean("masked_kl/chosen", terms.kl_chosen)
        mean("masked_kl/rejected", terms.kl_rejected)
        mean("loss/l1", terms.l1)

        # Sums and counts are gathered (not the ragged per-token values), then divided.
        keep = response.float()
        count = gather(keep.sum().reshape(1)).sum().clamp(min=1.0)
        for name, mask in (("reward", m_u), ("kl", m_d)):
            total = gather(mask.detach().float().sum().reshape(1)).sum()
            nonzero = gather(((mask.detach() > 0).float() * keep).sum().reshape(1)).sum()
            metrics[f"mask/{name}_mean"].append((total / count).item())
            metrics[f"mask/{name}_nonzero"].append((nonzero / count).item())


class SparsePOPreferenceTrainer(PreferenceTrainer):
    """SparsePO behind the one trainer interface (`prefsmith train sparsepo`, `iterate --trainer sparsepo`);
    its masks are saved with every checkpoint and the final model. Measured by task evaluation."""

    name: ClassVar[str] = "sparsepo"
    config_class: ClassVar[type[DPOConfig]] = SparsePOConfig

    def make_trainer(self, model: str, tokenizer: Any, dataset: Any, **kwargs: Any) -> SparsePOTrainer:
        assert isinstance(self.args, SparsePOConfig)
        return SparsePOTrainer(model=model, args=self.args, train_dataset=dataset, processing_class=tokenizer, **kwargs)
