"""`prefsmith inspect masks`: the response tokens of a few pairs coloured by their SparsePO mask weight.

People look at these pictures (HTML and PNG) to believe a mask; weights are recomputed exactly as in training.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from configs.errors import NotFoundError
from training.masks import TokenMaskNetworks, activation_mask, read_mask_config, saved_masks_exist

_MASK_CONFIG = "sparsepo_masks.json"


@dataclass
class MaskedResponse:
    """One response: its tokens as text and the reward / KL mask weight of each."""

    side: str  # "chosen" or "rejected"
    tokens: list[str]
    reward_weights: list[float]
    kl_weights: list[float]


@dataclass
class MaskedPair:
    prompt: str
    chosen: MaskedResponse
    rejected: MaskedResponse


def _response_ids(tokenizer: Any, prompt: list[dict], response: list[dict]) -> tuple[list[int], int]:
    """prompt+response token ids and where the response starts, tokenised as TRL's DPOTrainer does."""
    prompt_ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
    full_ids = tokenizer.apply_chat_template(prompt + response, tokenize=True, return_dict=True)
    prompt_ids, full_ids = list(prompt_ids["input_ids"]), list(full_ids["input_ids"])
    start = 0
    while start < min(len(prompt_ids), len(full_ids)) and prompt_ids[start] == full_ids[start]:
        start += 1
    return full_ids, start


def compute_pair_masks(model_dir: str | Path, dataset: Any, num_pairs: int) -> list[MaskedPair]:
    """Recompute the masks of the model trained into `model_dir` on the first `num_pairs` pairs."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = Path(model_dir)
    if not (model_dir / _MASK_CONFIG).is_file():
        raise NotFoundError(f"{model_dir} holds no SparsePO model ({_MASK_CONFIG} is missing)")
    config = read_mask_config(model_dir)
    networks = TokenMaskNetworks.from_pretrained(model_dir) if saved_masks_exist(model_dir) else None
    if config["mask_type"] == "learned" and networks is None:
        raise NotFoundError(f"{model_dir} was trained with learned masks but holds no mask weights")
    reference = AutoModelForCausalLM.from_pretrained(config["reference_model"], dtype=torch.float32).eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    pairs = []
    for row in dataset.select(range(min(num_pairs, len(dataset)))):
        sides = {}
        for side in ("chosen", "rejected"):
            ids, start = _response_ids(tokenizer, row["prompt"], row[side])
            input_ids = torch.tensor([ids])
            with torch.no_grad():
                out = reference(input_ids=input_ids, output_hidden_states=True)
                # Position t's hidden state weighs the token t+1 it predicts, as in training.
                hidden = [h[:, :-1] for h in out.hidden_states[1:]]
                response = torch.zeros(1, len(ids) - 1, dtype=torch.bool)
                response[0, start - 1 :] = True
                if networks is not None and config["mask_type"] == "learned":
                    m_u, m_d = networks(hidden)
                elif config["mask_type"] == "activation":
                    m_u = m_d = activation_mask(hidden, response)
                else:
                    m_u = m_d = response.float()
            ones = response.float()
            m_u = m_u if config["mask_on_reward"] else ones
            m_d = m_d if config["mask_on_kl"] else ones
            token_ids = ids[start:]
            sides[side] = MaskedResponse(
                side=side,
                tokens=[str(tokenizer.decode([token])) for token in token_ids],
                reward_weights=m_u[0, start - 1 :].tolist(),
                kl_weights=m_d[0, start - 1 :].tolist(),
            )
        prompt_text = " / ".join(message["content"] for message in row["prompt"])
        pairs.append(MaskedPair(prompt=prompt_text, chosen=sides["chosen"], rejected=sides["rejected"]))
    return pairs


def _colour(weight: float, scale: float) -> tuple[int, int, int]:
    """White (weight 0) to deep orange (the largest weight shown): learned masks are unbounded above."""
    level = max(0.0, min(1.0, weight / scale)) if scale > 0 else 0.0
    return (255, int(255 - 140 * level), int(255 - 235 * level))


def _scale(pairs: list[MaskedPair]) -> float:
    weights = [w for p in pairs for r in (p.chosen, p.rejected) for w in r.reward_weights + r.kl_weights]
    return max(weights, default=1.0)


def render_html(pairs: list[MaskedPair], title: str) -> str:
    scale = _scale(pairs)
    parts = [
        "<!doctype html><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "span.t{font-family:monospace;white-space:pre;border-radius:3px;padding:1px 0}"
        "h3{margin-bottom:.2em} .k{color:#666;font-size:90%}</style>",
        f"<h1>{html.escape(title)}</h1>",
        f"<p class='k'>Colour = mask weight (white 0, deep orange {scale:.3g}); hover a token for its values.</p>",
    ]
    for index, pair in enumerate(pairs):
        parts.append(f"<h2>Pair {index + 1}</h2><p><b>Prompt:</b> {html.escape(pair.prompt)}</p>")
        for response in (pair.chosen, pair.rejected):
            for label, weights in (("reward mask m_u", response.reward_weights), ("KL mask m_d", response.kl_weights)):
                parts.append(f"<h3>{response.side} — {label}</h3><p>")
                for token, weight in zip(response.tokens, weights, strict=True):
                    r, g, b = _colour(weight, scale)
                    parts.append(
                        f"<span class='t' style='background:rgb({r},{g},{b})' title='{weight:.4f}'>"
                        f"{html.escape(token)}</span>"
                    )
                parts.append("</p>")
    return "\n".join(parts) + "\n"


def render_png(pairs: list[MaskedPair], path: Path, width: int = 1000) -> None:
    """The reward mask of each response, token boxes coloured by weight, drawn with Pillow's default font."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default()
    scale = _scale(pairs)
    line_height, margin = 18, 10
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def layout(draw: ImageDraw.ImageDraw | None) -> int:
        y = margin
        for index, pair in enumerate(pairs):
            for response in (pair.chosen, pair.rejected):
                label = f"pair {index + 1} {response.side} (reward mask): "
                if draw is not None:
                    draw.text((margin, y), label, fill=(0, 0, 0), font=font)
                x = margin + int(probe.textlength(label, font=font))
                for token, weight in zip(response.tokens, response.reward_weights, strict=True):
                    text = token.replace("\n", "⏎")
                    size = int(probe.textlength(text, font=font)) + 2
                    if x + size > width - margin:
                        x, y = margin + 20, y + line_height
                    if draw is not None:
                        draw.rectangle((x, y, x + size, y + line_height - 3), fill=_colour(weight, scale))
                        draw.text((x + 1, y + 1), text, fill=(0, 0, 0), font=font)
                    x += size + 1
                y += line_height + 6
            y += 8
        return y + margin

    height = layout(None)
    image = Image.new("RGB", (width, height), (255, 255, 255))
    layout(ImageDraw.Draw(image))
    image.save(path)


def inspect_masks(model_dir: str | Path, dataset: Any, out_dir: str | Path, num_pairs: int = 3) -> list[Path]:
    """Write masks.html and masks.png for the first `num_pairs` pairs; returns their paths."""
    pairs = compute_pair_masks(model_dir, dataset, num_pairs)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    html_path, png_path = out_dir / "masks.html", out_dir / "masks.png"
    html_path.write_text(render_html(pairs, f"SparsePO masks of {model_dir}"), encoding="utf-8")
    render_png(pairs, png_path)
    return [html_path, png_path]
