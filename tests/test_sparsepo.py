"""Property tests of the SparsePO trainer (docs/methods.md, "SparsePO") on SmolLM2-135M-Instruct, CPU, fp32.

Every loss is checked to 1e-5 against an independent computation or TRL's own DPO loss on the same batch.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

pytestmark = [pytest.mark.model, pytest.mark.train]

BETA = 0.5
TOL = 1e-5

PAIRS = [
    ("What is 2 + 3?", "2 + 3 = 5.", "It is 6."),
    ("Compute 7 * 6.", "7 * 6 = 42", "The answer is 36, since seven sixes make thirty-six."),
    ("What is 10 - 4?", "6", "10 - 4 = 5"),
    ("Add 12 and 30.", "12 + 30 = 42.", "I think 40."),
    ("What is 9 / 3?", "9 / 3 = 3", "9 / 3 = 4"),
    ("Compute 5 squared.", "5 squared is 25.", "5 squared is 10."),
    ("What is 8 + 8?", "16", "8 + 8 = 18, because eight and eight make eighteen."),
    ("Subtract 3 from 11.", "11 - 3 = 8.", "It is 7."),
]


def save_tiny_llama(folder: Path, tokenizer_path: Path) -> Path:
    """A 2-layer random Llama with SmolLM2's tokenizer, for tests of plumbing that needs no real model."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return folder


def write_export(folder: Path, pairs: list[tuple[str, str, str]] = PAIRS) -> Path:
    """An export-shaped folder (data.parquet + manifest.json) with the columns `prefsmith export` writes."""
    import datasets

    rows: list[dict[str, Any]] = []
    for i, (question, chosen, rejected) in enumerate(pairs):
        rows.append(
            {
                "prompt": [
                    {"role": "system", "content": "You are a careful calculator."},
                    {"role": "user", "content": question},
                ],
                "chosen": [{"role": "assistant", "content": chosen}],
                "rejected": [{"role": "assistant", "content": rejected}],
                "score": 9.0,
                "chosen_score": 9.0,
                "rejected_score": 2.0,
                "pair_id": f"pair-{i}",
                "prompt_id": f"prompt-{i}",
                "run_id": "run-test",
                "round_index": 0,
            }
        )
    folder.mkdir(parents=True, exist_ok=True)
    datasets.Dataset.from_list(rows).to_parquet(str(folder / "data.parquet"))
    (folder / "manifest.json").write_text(json.dumps({"format": "parquet", "num_pairs": len(rows)}))
    return folder


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_export(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def dataset(export_dir: Path) -> Any:
    from storage.preference_sets import load_preference_set

    return load_preference_set(str(export_dir))


@pytest.fixture(scope="module")
def models(small_model_path: Path) -> dict[str, Any]:
    """Tokenizer, reference, and a policy nudged away from the reference (else every log-ratio is 0)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    ref = AutoModelForCausalLM.from_pretrained(str(small_model_path), dtype=torch.float32)
    policy = copy.deepcopy(ref)
    with torch.no_grad():
        for layer in policy.model.layers[-3:]:
            layer.mlp.down_proj.weight.add_(0.02 * torch.randn_like(layer.mlp.down_proj.weight))
    return {"tokenizer": AutoTokenizer.from_pretrained(str(small_model_path)), "ref": ref, "policy": policy}


def sparsepo_args(tmp_path: Path, **overrides: Any) -> Any:
    from training.sparsepo import SparsePOConfig

    settings: dict[str, Any] = {
        "output_dir": str(tmp_path / "out"),
        "bf16": False,
        "use_cpu": True,
        "beta": BETA,
        "per_device_train_batch_size": 2,
        "max_length": 128,
        "report_to": [],
        "save_strategy": "no",
        "disable_tqdm": True,
        "seed": 0,
    }
    settings.update(overrides)
    return SparsePOConfig(**settings)


def make_trainer(
    models: dict[str, Any], dataset: Any, tmp_path: Path, *, same_policy: bool = False, **kw: Any
):
    from training.sparsepo import SparsePOTrainer

    policy = copy.deepcopy(models["ref"] if same_policy else models["policy"])
    return SparsePOTrainer(
        model=policy,
        ref_model=copy.deepcopy(models["ref"]),
        args=sparsepo_args(tmp_path, **kw),
        train_dataset=dataset,
        processing_class=models["tokenizer"],
    )


def batch_of(trainer: Any, indices: tuple[int, ...] = (0, 1)) -> dict[str, torch.Tensor]:
    """A collated batch; pairs 0 and 1 have different prompt and response lengths, so rows carry padding."""
    return trainer._prepare_inputs(trainer.data_collator([trainer.train_dataset[i] for i in indices]))


def loss_of(trainer: Any, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return trainer.compute_loss(trainer.model, batch)


@pytest.fixture(scope="module")
def probe(models: dict[str, Any], dataset: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One batch of pairs 0 and 1 and the reference hidden states aligned as the trainer aligns them."""
    trainer = make_trainer(models, dataset, tmp_path_factory.mktemp("probe"), mask_type="ones")
    batch = batch_of(trainer)
    with torch.no_grad():
        out = models["ref"](
            input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
        )
    hidden = [h[:, :-1] for h in out.hidden_states[1:]]
    return {"batch": batch, "hidden": hidden, "response": batch["completion_mask"][:, 1:].bool()}


def reference_tdpo_v1(policy: Any, ref: Any, batch: dict[str, torch.Tensor], beta: float) -> float:
    """TDPO-v1 written out token by token in float64, independently of the trainer's vectorised code."""
    with torch.no_grad():
        kwargs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        policy_logits = policy(**kwargs).logits.double()
        ref_logits = ref(**kwargs).logits.double()
    rows = batch["input_ids"].shape[0]
    log_ratio, kl = [0.0] * rows, [0.0] * rows
    for i in range(rows):
        for t in range(1, batch["input_ids"].shape[1]):
            if batch["completion_mask"][i, t]:
                policy_dist = F.log_softmax(policy_logits[i, t - 1], dim=-1)
                ref_dist = F.log_softmax(ref_logits[i, t - 1], dim=-1)
                token = batch["input_ids"][i, t]
                log_ratio[i] += (policy_dist[token] - ref_dist[token]).item()
                kl[i] += (ref_dist.exp() * (ref_dist - policy_dist)).sum().item()
    pairs = rows // 2
    losses = []
    for j in range(pairs):
        u = log_ratio[j] - log_ratio[j + pairs]
        delta = kl[j + pairs] - kl[j]
        losses.append(-F.logsigmoid(torch.tensor(beta * (u - delta), dtype=torch.float64)).item())
    return sum(losses) / pairs


def test_ones_mask_with_kl_is_tdpo_v1(
    models: dict[str, Any], dataset: Any, probe: dict[str, Any], tmp_path: Path
) -> None:
    trainer = make_trainer(models, dataset, tmp_path, mask_type="ones", use_kl_term=True)
    batch = probe["batch"]
    assert (batch["attention_mask"] == 0).any(), "the batch must contain padding"
    expected = reference_tdpo_v1(models["policy"], models["ref"], batch, BETA)
    got = loss_of(trainer, batch).item()
    assert abs(got - expected) <= TOL
    # The KL term matters on this batch: dropping it changes the loss, so the match above is not vacuous.
    without_kl = make_trainer(models, dataset, tmp_path, mask_type="ones", use_kl_term=False)
    assert abs(loss_of(without_kl, batch).item() - expected) > 1e-4


@pytest.fixture(scope="module")
def trl_dpo_loss(models: dict[str, Any], dataset: Any, probe: dict[str, Any], tmp_path_factory: Any) -> float:
    """TRL's own sigmoid DPO loss on the probe batch (its fused LM head path, not our code)."""
    from trl import DPOConfig, DPOTrainer

    dpo = DPOTrainer(
        model=copy.deepcopy(models["policy"]),
        ref_model=copy.deepcopy(models["ref"]),
        args=DPOConfig(
            output_dir=str(tmp_path_factory.mktemp("dpo")),
            bf16=False,
            use_cpu=True,
            beta=BETA,
            loss_type="sigmoid",
            per_device_train_batch_size=2,
            max_length=128,
            report_to=[],
        ),
        train_dataset=dataset,
        processing_class=models["tokenizer"],
    )
    return dpo.compute_loss(dpo.model, probe["batch"]).item()


@pytest.mark.parametrize(
    "settings",
    [
        {"mask_type": "ones"},
        {"mask_type": "learned", "mask_on_reward": False},
        {"mask_type": "activation", "mask_on_reward": False},
    ],
    ids=["ones", "learned-off-reward", "activation-off-reward"],
)
def test_reward_mask_ones_without_kl_is_trl_sigmoid_dpo(
    models: dict[str, Any],
    dataset: Any,
    probe: dict[str, Any],
    trl_dpo_loss: float,
    tmp_path: Path,
    settings: dict[str, Any],
) -> None:
    sparse = make_trainer(models, dataset, tmp_path, use_kl_term=False, **settings)
    assert abs(trl_dpo_loss - math.log(2)) > 1e-3, (
        "policy and reference must differ for the comparison to bite"
    )
    assert abs(loss_of(sparse, probe["batch"]).item() - trl_dpo_loss) <= TOL


@pytest.mark.parametrize("mask_type", ["learned", "activation", "ones"])
def test_policy_equal_to_reference_gives_log2_plus_l1(
    models: dict[str, Any], dataset: Any, probe: dict[str, Any], tmp_path: Path, mask_type: str
) -> None:
    l1_u, l1_d = 0.03, 0.07
    trainer = make_trainer(
        models,
        dataset,
        tmp_path,
        same_policy=True,
        mask_type=mask_type,
        rw_kl_independent=True,
        l1_u=l1_u,
        l1_d=l1_d,
    )
    batch = probe["batch"]
    loss = loss_of(trainer, batch).item()
    hidden, response = probe["hidden"], probe["response"]
    m_u, m_d = trainer.token_masks(hidden, response)
    pairs = batch["input_ids"].shape[0] // 2
    # Independent learned masks keep the full λ; one shared mask halves both (the authors' convention).
    scale = 1.0 if m_u is not m_d else 0.5
    l1 = scale * (l1_u * m_u.sum().item() + l1_d * m_d.sum().item()) / pairs
    assert l1 > 0.01
    assert abs(loss - (math.log(2) + l1)) <= TOL


@pytest.mark.parametrize("mask_type", ["learned", "activation", "ones"])
@pytest.mark.parametrize("independent", [False, True], ids=["common", "independent"])
def test_masks_are_zero_on_prompt_and_padding(
    models: dict[str, Any],
    dataset: Any,
    probe: dict[str, Any],
    tmp_path: Path,
    mask_type: str,
    independent: bool,
) -> None:
    trainer = make_trainer(models, dataset, tmp_path, mask_type=mask_type, rw_kl_independent=independent)
    batch = probe["batch"]
    hidden, response = probe["hidden"], probe["response"]
    padding = batch["attention_mask"][:, 1:] == 0
    prompt = ~response & ~padding
    assert padding.any() and prompt.any()
    for mask in trainer.token_masks(hidden, response):
        assert torch.all(mask[~response] == 0)
        assert (mask[response] > 0).float().mean().item() > 0.5


@pytest.mark.parametrize("independent", [False, True], ids=["common", "independent"])
def test_l1_term_adds_exactly_lambda_times_mask_sum(
    models: dict[str, Any], dataset: Any, probe: dict[str, Any], tmp_path: Path, independent: bool
) -> None:
    l1_u, l1_d = 0.011, 0.005
    plain = make_trainer(models, dataset, tmp_path, mask_type="learned", rw_kl_independent=independent)
    penalised = make_trainer(
        models, dataset, tmp_path, mask_type="learned", rw_kl_independent=independent, l1_u=l1_u, l1_d=l1_d
    )
    penalised.mask_networks.load_state_dict(plain.mask_networks.state_dict())
    batch = probe["batch"]
    hidden, response = probe["hidden"], probe["response"]
    m_u, m_d = plain.token_masks(hidden, response)
    pairs = batch["input_ids"].shape[0] // 2
    scale = 0.5 if not independent else 1.0
    expected = scale * (l1_u * m_u.sum().item() + l1_d * m_d.sum().item()) / pairs
    difference = loss_of(penalised, batch).item() - loss_of(plain, batch).item()
    assert abs(difference - expected) <= TOL
    assert expected > 0.05


def test_common_mask_is_one_tensor_and_independent_masks_differ(
    models: dict[str, Any], dataset: Any, probe: dict[str, Any], tmp_path: Path
) -> None:
    common = make_trainer(models, dataset, tmp_path, mask_type="learned", rw_kl_independent=False)
    hidden, response = probe["hidden"], probe["response"]
    m_u, m_d = common.token_masks(hidden, response)
    assert m_u is m_d and torch.equal(m_u, m_d)
    assert common.mask_networks.kl is None
    independent = make_trainer(models, dataset, tmp_path, mask_type="learned", rw_kl_independent=True)
    i_u, i_d = independent.token_masks(hidden, response)
    assert i_u is not i_d and not torch.equal(i_u, i_d)


@pytest.mark.parametrize("independent", [False, True], ids=["common", "independent"])
def test_learned_mask_parameters_receive_gradients(
    models: dict[str, Any], dataset: Any, probe: dict[str, Any], tmp_path: Path, independent: bool
) -> None:
    trainer = make_trainer(models, dataset, tmp_path, mask_type="learned", rw_kl_independent=independent)
    loss_of(trainer, probe["batch"]).backward()
    grads = {name: p.grad for name, p in trainer.mask_networks.named_parameters()}
    assert len(grads) == (10 if independent else 5)
    for name, grad in grads.items():
        assert grad is not None and grad.abs().sum().item() > 0, name


def test_activation_mask_lies_in_unit_interval(probe: dict[str, Any]) -> None:
    from training.masks import activation_mask

    hidden, response = probe["hidden"], probe["response"]
    mask = activation_mask(hidden, response)
    assert not mask.requires_grad
    assert mask.min().item() >= 0.0 and mask.max().item() <= 1.0
    on_response = mask[response]
    # Min-max scaling spreads the weights over the interval instead of leaving them all equal.
    assert on_response.std().item() > 0.01
    assert torch.all(mask[~response] == 0)


def test_config_rejects_precomputed_reference_and_unknown_values(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="precompute_ref_log_probs is not supported"):
        sparsepo_args(tmp_path, precompute_ref_log_probs=True)
    with pytest.raises(ValueError, match="mask_type must be one of learned, activation, ones"):
        sparsepo_args(tmp_path, mask_type="attention")
    with pytest.raises(ValueError, match="mask_init"):
        sparsepo_args(tmp_path, mask_init="zeros")
    with pytest.raises(ValueError, match="loss_type must be 'sigmoid'"):
        sparsepo_args(tmp_path, loss_type="ipo")


def test_mask_weights_sit_in_their_own_folder_and_an_older_models_file_is_still_read(tmp_path: Path) -> None:
    from training.masks import (
        LEGACY_MASKS_WEIGHTS_NAME,
        MASKS_WEIGHTS_NAME,
        TokenMaskNetworks,
        save_mask_config,
        saved_masks_exist,
    )

    torch.manual_seed(0)
    networks = TokenMaskNetworks(num_layers=3, hidden_size=8, independent=True, init="normal")
    networks.save(tmp_path)
    save_mask_config(tmp_path, {"networks": networks.describe()})
    assert list(tmp_path.glob("*.safetensors")) == [], "nothing vLLM would load as the model's weights"
    (tmp_path / MASKS_WEIGHTS_NAME).rename(tmp_path / LEGACY_MASKS_WEIGHTS_NAME)  # as models before 2026-12-07
    assert saved_masks_exist(tmp_path)
    loaded = TokenMaskNetworks.from_pretrained(tmp_path).state_dict()
    assert loaded.keys() == networks.state_dict().keys()
    assert all(torch.equal(loaded[name], value) for name, value in networks.state_dict().items())
