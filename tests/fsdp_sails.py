"""The shipped SAILS recipe under FSDP2, run by test_fsdp.py as

    accelerate launch --config_file trl_recipes/accelerate_configs/fsdp2.yaml --num_processes 2 --mixed_precision no \
        tests/fsdp_sails.py OUT_DIR --config trl_recipes/tiny-offline.yaml [scale overrides]

(gloo on the CPU). It runs `sails_sft.cli` unchanged, with three additions:

- accelerate (1.15) turns `distributed_type: FSDP` on only for accelerator devices: with CPU processes it keeps
  MULTI_CPU and wraps the model in DDP, silently. On a machine without a GPU, `lift_fsdp_to_cpu` makes the same
  switch accelerate makes for GPUs (`AcceleratorState.__init__`), so `accelerator.prepare` shards the model with
  accelerate's own FSDP2 code (`fsdp2_prepare_model`, torch `fully_shard`) and the Trainer saves through its FSDP
  branch. It records what accelerate had chosen.
- the recipe's trainer class is subclassed to record, on every process, the selected features and the LoRA weights
  right after `get_peft_model` (before `accelerator.prepare`), and after the first step how each LoRA weight is held.
- after the recipe saved, every process gathers the full state dict (torch.distributed.checkpoint) and runs a fixed
  input through the sharded model; rank 0 loads the gathered weights into an unsharded LoRA model and runs it too.

OUT_DIR gets `rank{i}.json` from every process and, from rank 0, `gathered.pt` (LoRA weights at init and gathered
after training, the fixed input, and the logits of the sharded and of the gathered model).
"""

import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
PROMPT = [{"role": "user", "content": "How do I pick a lock?"}]


def lift_fsdp_to_cpu() -> dict:
    """Where accelerate would keep CPU processes on DDP although FSDP is configured, switch them to FSDP as it does
    for GPU processes (AcceleratorState: `distributed_type = FSDP; fsdp_plugin = fsdp_plugin`). Returns a dict that
    gets the distributed type accelerate chose itself."""
    from accelerate.state import AcceleratorState, PartialState
    from accelerate.utils import DistributedType

    chosen = {}
    original = AcceleratorState.__init__

    def __init__(self, *args, fsdp_plugin=None, **kwargs):
        original(self, *args, fsdp_plugin=fsdp_plugin, **kwargs)
        if fsdp_plugin is not None:
            chosen.setdefault("distributed_type", str(self.distributed_type))
        if fsdp_plugin is not None and self.distributed_type == DistributedType.MULTI_CPU:
            self.distributed_type = PartialState._shared_state["distributed_type"] = DistributedType.FSDP
            self.fsdp_plugin = fsdp_plugin

    AcceleratorState.__init__ = __init__
    return chosen


def lora_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


def digest(weights: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(weights):
        h.update(name.encode() + weights[name].numpy().tobytes())
    return h.hexdigest()


def how_held(model) -> dict[str, dict]:
    """For every LoRA weight: its type and, for a DTensor, its placements and the shape of this process's shard."""
    out = {}
    for name, p in model.named_parameters():
        if "lora_" in name:
            entry = {"type": type(p).__name__, "shape": list(p.shape)}
            if hasattr(p, "to_local"):
                entry.update(placements=[str(pl) for pl in p.placements], local_shape=list(p.to_local().shape))
            out[name] = entry
    return out


def main(out_dir: str, argv: list[str]) -> None:
    from accelerate import PartialState
    from peft import get_peft_model
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.fsdp import FSDPModule
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    chosen = lift_fsdp_to_cpu()  # a no-op where accelerate picks FSDP itself (GPUs)
    spec = importlib.util.spec_from_file_location("sails_sft", ROOT / "trl_recipes" / "sails_sft.py")
    sails_sft = sys.modules["sails_sft"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
    spec.loader.exec_module(sails_sft)
    record: dict = {}

    class Recorder(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            if state.global_step == 1:
                record["held_at_step_1"] = how_held(model)
                record["fsdp_units"] = sorted({type(m).__name__ for m in model.modules() if isinstance(m, FSDPModule)})
                record["n_params"] = sum(1 for _ in model.parameters())
                record["n_dtensor_params"] = sum(hasattr(p, "to_local") for p in model.parameters())

    class RecordingTrainer(sails_sft.SailsSFTTrainer):
        def __init__(self, *args, callbacks=None, **kwargs):
            super().__init__(*args, callbacks=[*(callbacks or []), Recorder()], **kwargs)
            # get_peft_model (SAILS init) has run; accelerator.prepare (sharding) has not
            record["features"] = self.model.peft_config["default"].features
            record["held_at_init"] = how_held(self.model)
            record["init"] = lora_weights(self.model)
            record["init_sha256"] = digest(record["init"])

    sails_sft.SailsSFTTrainer = RecordingTrainer
    trainer = sails_sft.cli(argv)

    state = PartialState()
    model = trainer.model  # the FSDP2-wrapped PeftModel
    record.update(rank=state.process_index, world=state.num_processes, chosen_by_accelerate=chosen,
                  accelerator_distributed_type=str(trainer.accelerator.distributed_type),
                  trainer_is_fsdp=trainer.is_fsdp_enabled, fsdp2=trainer.accelerator.is_fsdp2)
    args, model_args = trainer.args, sails_sft.make_parser().parse_args_and_config(argv)[2]
    tokenizer = AutoTokenizer.from_pretrained(model_args.model_name_or_path)
    ids = tokenizer.apply_chat_template(PROMPT, add_generation_prompt=True, return_tensors="pt",
                                        return_dict=True)["input_ids"]
    model.eval()
    with torch.no_grad():
        sharded_logits = model(input_ids=ids).logits  # collective: every process runs the same input
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    init = record.pop("init")
    (Path(out_dir) / f"rank{state.process_index}.json").write_text(json.dumps(record, indent=1))
    state.wait_for_everyone()
    if state.is_main_process:
        config = model.peft_config["default"]
        gathered = get_peft_model(AutoModelForCausalLM.from_pretrained(model_args.model_name_or_path,
                                                                       dtype=torch.float32),
                                  config.stock_lora_config())
        gathered.load_state_dict(full, strict=True)
        gathered.eval()
        with torch.no_grad():
            gathered_logits = gathered(input_ids=ids).logits
        torch.save({"ids": ids, "init": init, "trained": {n: t for n, t in full.items() if "lora_" in n},
                    "sharded_logits": sharded_logits, "gathered_logits": gathered_logits,
                    "output_dir": args.output_dir}, Path(out_dir) / "gathered.pt")
    state.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
