"""Multi-process SAILS, run by test_distributed.py as
`accelerate launch --multi_gpu --num_processes 2 tests/distributed_sails.py OUT.json` (gloo on CPU).

Each process scores its share of the selection data (the sums are gathered) and initialises on its own; the
script records the features and the SAE fit (the test compares them with a single-process run), the init of every
process, the init through a DDP wrapper, and the weights after a short DDP training run.
"""

import copy
import hashlib
import json
import sys

import torch
from accelerate import PartialState
from accelerate.utils import gather_object
from peft import get_peft_model
from torch.nn.parallel import DistributedDataParallel
from trl import SFTConfig, SFTTrainer

from peft_sails import SAILSConfig, initialize_sails_weights, select_features
from peft_sails.offline import build_tokenizer, tiny_llama, toy_safety_data


def digest(model) -> str:
    h = hashlib.sha256()
    for name, p in sorted(model.named_parameters()):
        if "lora_" in name:
            h.update(p.detach().cpu().numpy().tobytes())
    return h.hexdigest()


def main(out: str) -> None:
    state = PartialState(cpu=True)
    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    aligned, unaligned, _ = toy_safety_data(n=48, seed=0)
    config = SAILSConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], top_k=8,
                         sae_release="local-org/tiny-llama-saes", sae_ids={1: "layer_1", 2: "layer_2"})
    config = select_features(tiny_llama(tokenizer), tokenizer, config, aligned, unaligned, show_progress=False)
    model = get_peft_model(tiny_llama(tokenizer), copy.deepcopy(config))
    init = digest(model)

    wrapped = get_peft_model(tiny_llama(tokenizer), copy.deepcopy(config))
    with torch.no_grad():
        for name, p in wrapped.named_parameters():
            if "lora_" in name:
                p.zero_()
    ddp = DistributedDataParallel(wrapped)
    initialize_sails_weights(ddp)  # initialise through the wrapper
    two_step = digest(ddp.module)

    args = SFTConfig(output_dir=f"{out}.run", max_steps=3, per_device_train_batch_size=4, learning_rate=1e-2,
                     bf16=False, use_cpu=True, report_to=[], save_strategy="no", seed=0)
    SFTTrainer(model=model, args=args, train_dataset=aligned, processing_class=tokenizer).train()
    result = {"rank": state.process_index, "world": state.num_processes, "features": config.features,
              "sae_fit": config.sae_fit,
              "init": init, "two_step": two_step, "trained": digest(model)}
    results = gather_object([result])
    if state.is_main_process:
        with open(out, "w") as f:
            json.dump(results, f)


if __name__ == "__main__":
    main(sys.argv[1])
