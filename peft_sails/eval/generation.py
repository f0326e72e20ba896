"""Batched generation with the tokenizer's chat template, for any causal LM (base, PEFT or merged)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import GenerationConfig


@dataclass
class GenerationSettings:
    """How responses are generated. The default is greedy decoding, as in the paper."""

    max_new_tokens: int = field(default=256, metadata={"help": "Tokens generated per response."})
    batch_size: int = field(default=8, metadata={"help": "Prompts generated together."})
    do_sample: bool = field(default=False, metadata={"help": "Sample instead of greedy decoding."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature (with --do_sample)."})
    top_p: float = field(default=1.0, metadata={"help": "Nucleus sampling mass (with --do_sample)."})
    system_prompt: str | None = field(default=None, metadata={"help": "A system message before each prompt."})
    use_chat_template: bool = field(default=True, metadata={
        "help": "Wrap each prompt in the tokenizer's chat template (--no_use_chat_template: raw text, for base "
                "models)."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling."})

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError(f"max_new_tokens ({self.max_new_tokens}) and batch_size ({self.batch_size}) must be >= 1.")


def _prompt_ids(tokenizer: Any, prompt: str, settings: GenerationSettings) -> list[int]:
    if not settings.use_chat_template:
        return tokenizer(prompt)["input_ids"]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"The tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template. Use the chat model's "
            "tokenizer, or set use_chat_template=False (--no_use_chat_template) to feed the raw prompt text."
        )
    messages = [{"role": "user", "content": prompt}]
    if settings.system_prompt:
        messages.insert(0, {"role": "system", "content": settings.system_prompt})
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template already has its special tokens


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row):] = torch.tensor(row, dtype=torch.long)
        mask[i, width - len(row):] = 1
    return ids, mask


def generate_responses(model: Any, tokenizer: Any, prompts: Sequence[str], settings: GenerationSettings | None = None,
                       show_progress: bool = True, desc: str = "generating") -> list[str]:
    """One response per prompt, in the prompts' order. Prompts are batched by length (left padding) and each is
    wrapped as a single user turn in the chat template (after `settings.system_prompt`, if any)."""
    settings = settings or GenerationSettings()
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.generation_config.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    if pad is None:
        raise ValueError("The tokenizer has neither a pad nor an eos token; set tokenizer.pad_token first.")
    config = GenerationConfig(max_new_tokens=settings.max_new_tokens, do_sample=settings.do_sample,
                              pad_token_id=pad, eos_token_id=model.generation_config.eos_token_id or eos,
                              **({"temperature": settings.temperature, "top_p": settings.top_p}
                                 if settings.do_sample else {}))
    encoded = [_prompt_ids(tokenizer, p, settings) for p in prompts]
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i]))
    device = next(model.parameters()).device
    responses: list[str] = [""] * len(encoded)
    if settings.do_sample:
        torch.manual_seed(settings.seed)
    model.eval()
    batches = [order[i:i + settings.batch_size] for i in range(0, len(order), settings.batch_size)]
    for batch in tqdm(batches, desc=desc, disable=not show_progress or not batches, unit="batch"):
        ids, mask = _left_pad([encoded[i] for i in batch], pad)
        with torch.inference_mode():
            out = model.generate(input_ids=ids.to(device), attention_mask=mask.to(device), generation_config=config)
        texts = tokenizer.batch_decode(out[:, ids.shape[1]:], skip_special_tokens=True)
        for i, text in zip(batch, texts):
            responses[i] = text.strip()
    return responses
