"""Turn chat (`messages`) or prompt/completion datasets into token batches with a mask of the tokens to score."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from datasets import Dataset

from .config import SAILSConfig


@dataclass
class ScoredBatch:
    input_ids: torch.Tensor  # [batch, seq]
    attention_mask: torch.Tensor  # [batch, seq]
    score_mask: torch.Tensor  # [batch, seq] bool: tokens whose activations are averaged


def to_chat(dataset: Dataset, prompt_column: str, response_column: str, messages_column: str = "messages") -> Dataset:
    """Turn string columns (e.g. LLM-LAT/harmful-dataset's `prompt` and `chosen`) into a one-turn chat column."""
    missing = [c for c in (prompt_column, response_column) if c not in dataset.column_names]
    if missing:
        raise ValueError(f"Columns {missing} not found; the dataset has {dataset.column_names}.")

    def convert(row: dict[str, Any]) -> dict[str, Any]:
        return {messages_column: [{"role": "user", "content": row[prompt_column]},
                                  {"role": "assistant", "content": row[response_column]}]}

    return dataset.map(convert, remove_columns=dataset.column_names)


def _is_chat(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(m, dict) and "role" in m and "content" in m for m in value)


def _columns(dataset: Any) -> list[str]:
    if hasattr(dataset, "column_names"):
        return list(dataset.column_names)
    return list(dataset[0].keys()) if len(dataset) else []


def check_selection_data(dataset: Any, config: SAILSConfig, tokenizer: Any, name: str) -> None:
    """Fail early, naming `name` ('aligned'/'unaligned'), on empty data, missing columns or a missing chat template."""
    if dataset is None or len(dataset) == 0:
        raise ValueError(f"The {name} selection dataset is empty; stage 1 needs examples on both sides.")
    columns = _columns(dataset)
    if config.messages_column in columns:
        sample = dataset[0][config.messages_column]
    elif config.prompt_column in columns and config.completion_column in columns:
        sample = dataset[0][config.prompt_column]
    else:
        raise ValueError(
            f"The {name} dataset has columns {columns}; expected a '{config.messages_column}' column (chat format) "
            f"or '{config.prompt_column}' and '{config.completion_column}' (set messages_column/prompt_column/"
            "completion_column in SAILSConfig to use other names)."
        )
    if _is_chat(sample) and not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"The {name} dataset is in chat format but the tokenizer has no chat_template; use the chat model's "
            "tokenizer or give prompt/completion strings."
        )
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("Selection needs a fast tokenizer (offset mapping) to find the response tokens.")


def split_prompt_response(row: dict[str, Any], config: SAILSConfig, tokenizer: Any) -> tuple[str, str, bool]:
    """Return (prompt_text, full_text, text_has_special_tokens) for one row."""
    if config.messages_column in row:
        messages = row[config.messages_column]
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError(f"A chat example must end with an assistant message, got roles {[m.get('role') for m in messages]}.")
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt, full, True
    prompt, completion = row[config.prompt_column], row[config.completion_column]
    if _is_chat(prompt):
        full = tokenizer.apply_chat_template(list(prompt) + list(completion), tokenize=False)
        prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return prompt, full, True
    return prompt, prompt + completion, False


def _score_mask(offsets: Sequence[tuple[int, int]], prompt_chars: int, scope: str) -> list[bool]:
    in_prompt = [start < prompt_chars for start, _ in offsets]
    if scope == "all":
        return [True] * len(offsets)
    if scope == "prompt":
        return in_prompt
    if scope == "response":
        return [not p for p in in_prompt]
    last = max((i for i, p in enumerate(in_prompt) if p), default=None)  # last_prompt
    return [i == last for i in range(len(offsets))]


def _encode(row: dict[str, Any], config: SAILSConfig, tokenizer: Any) -> tuple[list[int], list[bool]]:
    prompt, full, templated = split_prompt_response(row, config, tokenizer)
    if not full.startswith(prompt):
        raise ValueError("The chat template renders the prompt differently inside the full conversation; "
                         f"cannot locate the response in: {full[:200]!r}")
    enc = tokenizer(full, add_special_tokens=not templated, return_offsets_mapping=True,
                    truncation=True, max_length=config.max_length)
    return enc["input_ids"], _score_mask(enc["offset_mapping"], len(prompt), config.token_scope)


def iter_scored_batches(
    dataset: Iterable[dict[str, Any]], config: SAILSConfig, tokenizer: Any, device: torch.device | str
) -> Iterator[ScoredBatch]:
    """Tokenise lazily and yield right-padded batches; memory holds one batch at a time."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    rows: list[tuple[list[int], list[bool]]] = []
    limit = config.max_selection_samples

    def collate() -> ScoredBatch:
        width = max(len(ids) for ids, _ in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(rows), width), dtype=torch.long)
        score = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, (row_ids, row_mask) in enumerate(rows):
            ids[i, : len(row_ids)] = torch.tensor(row_ids)
            attn[i, : len(row_ids)] = 1
            score[i, : len(row_mask)] = torch.tensor(row_mask, dtype=torch.bool)
        return ScoredBatch(ids.to(device), attn.to(device), score.to(device))

    for index, row in enumerate(dataset):
        if limit is not None and index >= limit:
            break
        rows.append(_encode(row, config, tokenizer))
        if len(rows) == config.selection_batch_size:
            yield collate()
            rows = []
    if rows:
        yield collate()
