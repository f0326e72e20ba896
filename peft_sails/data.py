"""Turn chat (`messages`) or prompt/completion datasets into token batches with a mask of the tokens to score."""

from __future__ import annotations

import warnings
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
    score_mask: torch.Tensor  # [batch, seq] bool: tokens whose activations are averaged (never padding, special or
    # chat-template tokens, except the "last_prompt" token, which is the template's generation prompt)
    index: int = 0  # position of the batch in the whole data (batches of consecutive rows)


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


def split_prompt_response(row: dict[str, Any], config: SAILSConfig, tokenizer: Any) -> tuple[str, str, bool, list[str]]:
    """Return (prompt_text, full_text, text_has_special_tokens, message_contents) for one row."""
    if config.messages_column in row:
        messages = row[config.messages_column]
        if not messages or messages[-1].get("role") != "assistant":
            raise ValueError(f"A chat example must end with an assistant message, got roles {[m.get('role') for m in messages]}.")
        prompt = tokenizer.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        return prompt, full, True, [m["content"] for m in messages]
    prompt, completion = row[config.prompt_column], row[config.completion_column]
    if _is_chat(prompt):
        messages = list(prompt) + list(completion)
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return prompt, full, True, [m["content"] for m in messages]
    return prompt, prompt + completion, False, [prompt, completion]


def content_spans(full: str, contents: Sequence[str]) -> list[tuple[int, int]] | None:
    """Character spans of the message contents inside the rendered text, in order (templates may trim them);
    None when the template rewrote a content so that it cannot be found."""
    spans, cursor = [], 0
    for content in contents:
        text = content.strip()
        start = full.find(text, cursor) if text else cursor
        if start < 0:
            return None
        spans.append((start, start + len(text)))
        cursor = start + len(text)
    return spans


def _score_mask(offsets: Sequence[tuple[int, int]], special: Sequence[bool], prompt_chars: int,
                spans: Sequence[tuple[int, int]] | None, scope: str) -> list[bool]:
    """Tokens to score: those of the message contents in `scope` (never special tokens such as BOS, nor the
    chat template's own tokens); for "last_prompt", the last prompt token, whatever it is: the end of the
    template's generation prompt, where the model decides how to answer."""
    in_prompt = [start < prompt_chars for start, _ in offsets]
    if scope == "last_prompt":
        last = max((i for i, p in enumerate(in_prompt) if p), default=None)
        return [i == last for i in range(len(offsets))]
    in_content = [not sp and end > start and (spans is None or any(start < b and end > a for a, b in spans))
                  for (start, end), sp in zip(offsets, special)]
    wanted = {"all": [True] * len(offsets), "prompt": in_prompt, "response": [not p for p in in_prompt]}[scope]
    return [w and c for w, c in zip(wanted, in_content)]


def _encode(row: dict[str, Any], config: SAILSConfig, tokenizer: Any, special_ids: set[int]) -> tuple[list[int], list[bool]]:
    prompt, full, templated, contents = split_prompt_response(row, config, tokenizer)
    if not full.startswith(prompt):
        raise ValueError("The chat template renders the prompt differently inside the full conversation; "
                         f"cannot locate the response in: {full[:200]!r}")
    spans = content_spans(full, contents)
    if spans is None:
        warnings.warn("The chat template changes the text of some messages, so their template tokens cannot be told "
                      "from content: all non-special tokens of the scope are scored in those examples.", stacklevel=2)
    enc = tokenizer(full, add_special_tokens=not templated, return_offsets_mapping=True,
                    truncation=True, max_length=config.max_length)
    special = [i in special_ids for i in enc["input_ids"]]
    return enc["input_ids"], _score_mask(enc["offset_mapping"], special, len(prompt), spans, config.token_scope)


def iter_scored_batches(
    dataset: Iterable[dict[str, Any]], config: SAILSConfig, tokenizer: Any, device: torch.device | str,
    shard: tuple[int, int] = (0, 1),
) -> Iterator[ScoredBatch]:
    """Tokenise lazily and yield right-padded batches of `config.selection_batch_size` consecutive rows; memory holds
    one batch at a time. With `shard=(rank, world)`, only the batches whose index is `rank` modulo `world` are
    tokenised and yielded (each keeps its global `index`), so processes split the data without overlap."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    rank, world = shard
    special_ids = set(tokenizer.all_special_ids)
    rows: list[dict[str, Any]] = []
    limit = config.max_selection_samples

    def collate(index: int) -> ScoredBatch:
        encoded = [_encode(row, config, tokenizer, special_ids) for row in rows]
        width = max(len(ids) for ids, _ in encoded)
        ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
        attn = torch.zeros((len(encoded), width), dtype=torch.long)
        score = torch.zeros((len(encoded), width), dtype=torch.bool)
        for i, (row_ids, row_mask) in enumerate(encoded):
            ids[i, : len(row_ids)] = torch.tensor(row_ids)
            attn[i, : len(row_ids)] = 1
            score[i, : len(row_mask)] = torch.tensor(row_mask, dtype=torch.bool)
        return ScoredBatch(ids.to(device), attn.to(device), score.to(device), index)

    size, index = config.selection_batch_size, 0
    for n, row in enumerate(dataset):
        if limit is not None and n >= limit:
            break
        if (n // size) % world != rank:
            continue
        index = n // size
        rows.append(row)
        if len(rows) == size:
            yield collate(index)
            rows = []
    if rows:
        yield collate(index)
