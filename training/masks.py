"""SparsePO token masks: the learned mask network and the activation (MaPO) mask, and how masks are saved.

A mask weighs every response token's reward and KL terms; both kinds read the reference model's hidden states.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

# In a folder of their own: vLLM loads every *.safetensors file at the top of a model folder as the model's weights
# (a trained SparsePO model is the next round's target), so mask weights beside model.safetensors break its load.
MASKS_WEIGHTS_NAME = "sparsepo_masks/masks.safetensors"
LEGACY_MASKS_WEIGHTS_NAME = "sparsepo_masks.safetensors"  # where models trained before 2026-12-07 keep them
MASKS_CONFIG_NAME = "sparsepo_masks.json"

MaskInit = Literal["ones", "normal"]


class LearnedTokenMask(nn.Module):
    """`m = ReLU(Σ_l w_l · ReLU(a_lᵀ LN(h_l) + b_l))` over the hidden states of all L layers.

    One LayerNorm is shared by all layers and the mixer has no bias (docs/methods.md, "SparsePO"). The per-layer
    projections are stored as one (L, H) matrix so that a forward is a single einsum.
    """

    def __init__(self, num_layers: int, hidden_size: int, init: MaskInit = "ones") -> None:
        super().__init__()
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.norm = nn.LayerNorm(hidden_size)
        self.layer_weight = nn.Parameter(torch.empty(num_layers, hidden_size))
        self.layer_bias = nn.Parameter(torch.empty(num_layers))
        self.mixer = nn.Parameter(torch.empty(num_layers))
        self.reset_parameters(init)

    @torch.no_grad()
    def reset_parameters(self, init: MaskInit) -> None:
        self.norm.reset_parameters()
        nn.init.normal_(self.layer_weight, std=0.02)
        if init == "ones":
            # Bias 1 and mixer 1/L make every token's mask ≈ 1 at step 0, so training starts from TDPO
            # and no ReLU is dead (the official init can zero the mixer output everywhere).
            self.layer_bias.fill_(1.0)
            self.mixer.fill_(1.0 / self.num_layers)
        elif init == "normal":
            # The authors' init: HF's N(0, 0.02) for every weight, zero biases.
            self.layer_bias.zero_()
            nn.init.normal_(self.mixer, std=0.02)
        else:
            raise ValueError(f"mask_init must be 'ones' or 'normal', got {init!r}")

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> torch.Tensor:
        """`hidden_states`: L tensors of shape (B, T, H) → mask of shape (B, T), non-negative."""
        stacked = torch.stack(list(hidden_states), dim=0).to(self.layer_weight.dtype)  # (L, B, T, H)
        per_layer = torch.einsum("lbth,lh->lbt", self.norm(stacked), self.layer_weight)
        per_layer = torch.relu(per_layer + self.layer_bias[:, None, None])
        return torch.relu(torch.einsum("lbt,l->bt", per_layer, self.mixer))


class TokenMaskNetworks(nn.Module):
    """The learned masks of one trainer: one network shared by reward and KL ("common"), or two."""

    def __init__(self, num_layers: int, hidden_size: int, independent: bool, init: MaskInit = "ones") -> None:
        super().__init__()
        self.num_layers = num_layers
        self.hidden_size = hidden_size
        self.independent = independent
        self.init = init
        self.reward = LearnedTokenMask(num_layers, hidden_size, init)
        self.kl = LearnedTokenMask(num_layers, hidden_size, init) if independent else None

    def forward(self, hidden_states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(m_u, m_d); with a common network both are the same tensor object."""
        m_u = self.reward(hidden_states)
        m_d = self.kl(hidden_states) if self.kl is not None else m_u
        return m_u, m_d

    def save(self, directory: str | Path) -> None:
        """Write the weights; `save_mask_config` writes the description that `from_pretrained` reads."""
        from safetensors.torch import save_file

        path = Path(directory) / MASKS_WEIGHTS_NAME
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {name: tensor.detach().cpu().contiguous() for name, tensor in self.state_dict().items()}
        save_file(state, str(path), metadata={"format": "pt"})

    def describe(self) -> dict[str, object]:
        return {
            "num_layers": self.num_layers,
            "hidden_size": self.hidden_size,
            "independent": self.independent,
            "init": self.init,
        }

    @classmethod
    def from_pretrained(cls, directory: str | Path) -> TokenMaskNetworks:
        """Rebuild the networks saved in `directory` by `save` (a trained model or a checkpoint folder)."""
        from safetensors.torch import load_file

        config = read_mask_config(directory)["networks"]
        networks = cls(config["num_layers"], config["hidden_size"], config["independent"], config["init"])
        networks.load_state_dict(load_file(str(_weights_path(Path(directory)))))
        return networks


def _weights_path(directory: Path) -> Path:
    """The mask weights of a saved model: in their own folder, or beside the model (older models)."""
    current, legacy = directory / MASKS_WEIGHTS_NAME, directory / LEGACY_MASKS_WEIGHTS_NAME
    return legacy if legacy.is_file() and not current.is_file() else current


def save_mask_config(directory: str | Path, config: dict[str, object]) -> None:
    """Describe the masks a trained model used (type, flags, reference model, learned network shape)."""
    path = Path(directory) / MASKS_CONFIG_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


def read_mask_config(directory: str | Path) -> dict:
    return json.loads((Path(directory) / MASKS_CONFIG_NAME).read_text(encoding="utf-8"))


def saved_masks_exist(directory: str | Path) -> bool:
    directory = Path(directory)
    return _weights_path(directory).is_file() and (directory / MASKS_CONFIG_NAME).is_file()


def activation_mask(hidden_states: Sequence[torch.Tensor], response_mask: torch.Tensor) -> torch.Tensor:
    """The MaPO activation mask in [0, 1], detached, zero outside `response_mask` (B, T).

    A documented simplification (docs/methods.md, "SparsePO"): only the residual stream of every layer is used (the
    official code also averages MLP, attention and logit activations). Each layer's feature-mean is min–max
    rescaled over the response tokens of each sequence, then the layers are averaged.
    """
    with torch.no_grad():
        keep = response_mask.bool()
        layers = []
        for hidden in hidden_states:
            activation = hidden.float().mean(dim=-1)  # (B, T)
            lowest = activation.masked_fill(~keep, float("inf")).amin(dim=1, keepdim=True)
            highest = activation.masked_fill(~keep, float("-inf")).amax(dim=1, keepdim=True)
            spread = highest - lowest
            # A response of one token (or of identical activations) carries no ranking: weigh it fully.
            flat = ~torch.isfinite(spread) | (spread <= 1e-12)
            scaled = (activation - lowest) / torch.where(flat, torch.ones_like(spread), spread)
            scaled = torch.where(flat, torch.ones_like(scaled), scaled)
            layers.append(scaled.clamp(0.0, 1.0))
        return torch.stack(layers, dim=0).mean(dim=0) * keep
