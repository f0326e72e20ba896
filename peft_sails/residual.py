"""Residual-stream sites of a transformers decoder, and forward hooks that read them."""

from __future__ import annotations

import re
import functools
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Literal, Optional

import torch
from torch import nn
from tqdm.auto import tqdm

_RESID_HOOK = re.compile(r"^blocks\.(\d+)\.hook_resid_(pre|post)$")


@dataclass(frozen=True)
class ResidualSite:
    """Where an SAE reads the residual stream: before (`pre`) or after (`post`) decoder layer `layer`.

    TransformerLens' `blocks.L.hook_resid_post` is the output of `model.model.layers[L]`, i.e.
    `hidden_states[L + 1]` of `output_hidden_states=True`; `hook_resid_pre` is that layer's input.
    """

    layer: int
    position: Literal["pre", "post"]

    @classmethod
    def from_hook_name(cls, hook_name: str) -> "ResidualSite":
        match = _RESID_HOOK.match(hook_name or "")
        if match is None:
            raise ValueError(
                f"SAE hook {hook_name!r} is not a residual-stream hook; SAILS needs an SAE trained on "
                "'blocks.L.hook_resid_post' or 'blocks.L.hook_resid_pre' (e.g. Gemma Scope 'res' or Llama Scope 'R')."
            )
        return cls(int(match.group(1)), match.group(2))


def decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The decoder blocks of a transformers causal LM (Llama, Gemma-2, Mistral, Qwen... all use `.layers`)."""
    n_layers = model.config.num_hidden_layers
    for name, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and name.endswith("layers") and len(module) == n_layers:
            return module
    raise ValueError(
        f"Could not find the {n_layers} decoder layers of {type(model).__name__} (an nn.ModuleList named '*layers')."
    )


def model_device(model: nn.Module) -> torch.device:
    """The device of the model's materialised weights; a clear error if they are all on the meta device."""
    device = next((p.device for p in model.parameters() if p.device.type != "meta"), None)
    if device is None:
        raise ValueError(
            "The base model's weights are on the meta device: SAILS needs them (selection and norm mapping). Load "
            "the weights first, or initialise later with initialize_sails_weights once they are materialised."
        )
    return device


def is_zero3_param(param: torch.Tensor) -> bool:
    """A DeepSpeed ZeRO-3 parameter (`ds_id` set: its data is a shard except while gathered)."""
    return hasattr(param, "ds_id") and hasattr(param, "ds_numel")


def has_zero3_params(model: nn.Module) -> bool:
    """Whether some parameter of `model` is partitioned by DeepSpeed ZeRO-3."""
    return any(map(is_zero3_param, model.parameters()))


@contextmanager
def gathered(params: Iterable[torch.Tensor], modifier_rank: Optional[int] = None) -> Iterator[None]:
    """Make the ZeRO-3 parameters among `params` whole on this process for the block: a collective, every process
    enters it with the same parameters. With `modifier_rank`, what that rank writes is kept (partitioned again on
    exit). A no-op without ZeRO-3 parameters (DeepSpeed is imported only then)."""
    zero3 = [p for p in params if is_zero3_param(p)]
    if not zero3:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(zero3, modifier_rank=modifier_rank):
        yield


@contextmanager
def gather_on_forward(model: nn.Module) -> Iterator[None]:
    """Make each module's own ZeRO-3 parameters whole just for its forward, as a DeepSpeed engine's hooks do, where
    no engine manages `model` (its modules have no `ds_id`); a no-op otherwise. Every process must run the same
    forwards. What a StopForward leaves gathered is released on exit."""
    if not has_zero3_params(model) or any(hasattr(m, "ds_id") for m in model.modules()):
        yield
        return
    open_: dict[int, ExitStack] = {}

    def pre(module: nn.Module, args: Any) -> None:
        open_[id(module)] = stack = ExitStack()
        stack.enter_context(gathered(module.parameters(recurse=False)))

    def post(module: nn.Module, args: Any, output: Any) -> None:
        open_.pop(id(module)).close()

    with ExitStack() as hooks:
        for module in model.modules():
            if any(is_zero3_param(p) for p in module.parameters(recurse=False)):
                hooks.callback(module.register_forward_pre_hook(pre).remove)
                hooks.callback(module.register_forward_hook(post).remove)
        try:
            yield
        finally:
            for stack in reversed(list(open_.values())):  # modules whose forward a StopForward interrupted
                stack.close()


def check_not_partitioned(param: torch.Tensor, name: str) -> None:
    """Refuse a parameter this process holds only a shard of where SAILS reads or writes it (a ZeRO-3 shard, i.e.
    an empty tensor with `ds_numel` set, outside `gathered`; an FSDP2 DTensor): it would see a fraction of it."""
    full = getattr(param, "ds_numel", None)
    sharded = (full is not None and param.numel() != full) or type(param).__name__ == "DTensor" or (
        param.numel() == 0 and not param.is_meta)
    if sharded:
        raise ValueError(
            f"{name} is partitioned across processes (DeepSpeed ZeRO-3 or FSDP: this process holds {param.numel()} "
            f"of its {full if full is not None else '?'} values), and SAILS must read or write all of it. Initialise "
            "before the model is wrapped: get_peft_model(model, config) on fully loaded weights (or "
            "low_cpu_mem_usage=True, then initialize_sails_weights(peft_model)) before accelerator.prepare / "
            "deepspeed.initialize; or initialise on one process, save the adapter and load it in the sharded run."
        )


class StopForward(Exception):
    """Raised by a hook to skip the layers after the site being read."""


@contextmanager
def read_residual(
    model: nn.Module, site: ResidualSite, fn: Callable[[torch.Tensor], None], stop: bool = True
) -> Iterator[None]:
    """Call `fn(hidden_states)` at `site` on every forward pass; with `stop`, end the pass there.

    With `stop=True` wrap the forward call in `try/except StopForward`; layers after the site never run.
    """
    block = decoder_layers(model)[site.layer]

    def _read(hidden: torch.Tensor) -> None:
        fn(hidden)
        if stop:
            raise StopForward

    if site.position == "post":
        handle = block.register_forward_hook(
            lambda module, args, output: _read(output[0] if isinstance(output, tuple) else output)
        )
    else:
        handle = block.register_forward_pre_hook(
            lambda module, args, kwargs: _read(args[0] if args else kwargs["hidden_states"]), with_kwargs=True
        )
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def run_to_sites(
    model: nn.Module,
    sites: Sequence[ResidualSite],
    batches: Iterable[Any],
    fn: Callable[[int, torch.Tensor, Any], None],
    desc: str = "",
    show_progress: bool = False,
) -> None:
    """Run each batch (with `input_ids`, `attention_mask`) only up to the deepest of `sites`; at site `i` call
    `fn(i, hidden_states, batch)`."""
    deepest = max(range(len(sites)), key=lambda i: (sites[i].layer, sites[i].position == "post"))
    current: dict[str, Any] = {}
    with ExitStack() as hooks:
        for i, site in enumerate(sites):
            reader = functools.partial(lambda i, hidden: fn(i, hidden, current["batch"]), i)
            hooks.enter_context(read_residual(model, site, reader, stop=i == deepest))
        for batch in tqdm(batches, desc=desc, disable=not show_progress, leave=False):
            current["batch"] = batch
            try:
                with gather_on_forward(model):
                    model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
            except StopForward:
                pass


def collect_residuals(model: nn.Module, site: ResidualSite, batches: Iterable[Any]) -> torch.Tensor:
    """The float32 residual activations at `site` of every scored token (`batch.score_mask`), as `[tokens, d]`."""
    chunks: list[torch.Tensor] = []
    run_to_sites(model, [site], batches, lambda _, hidden, batch: chunks.append(hidden[batch.score_mask].float()))
    return torch.cat(chunks)
