"""SAILS under real DeepSpeed ZeRO-3 (2 processes, gloo, CPU), run by test_zero3.py as
`torchrun --nproc_per_node 2 tests/zero3_sails.py OUT.json CASES` with DS_ACCELERATOR=cpu.

The model is loaded with `from_pretrained` while an `HfDeepSpeedConfig` is alive, so transformers builds it under
`deepspeed.zero.Init`: every parameter is a ZeRO-3 shard (numel 0 on a process, `ds_numel` its full size). Each
case records either whether its LoRA weights / features equal a plain single-process run, or the error it raised.
CASES (comma-separated): select_no_engine, get_peft_model, two_step_engine, select_engine (selection data that
sharding would split unevenly: 5 batches per side on 2 processes; under ZeRO-3 every process scores all of it).
"""

import copy
import datetime
import json
import os
import sys
import traceback

import deepspeed
import torch
import torch.distributed as dist
from peft import get_peft_model
from transformers import AutoModelForCausalLM
from transformers.integrations import HfDeepSpeedConfig

from peft_sails import SAILSConfig, initialize_sails_weights, select_features
from peft_sails.offline import build_tokenizer, make_sae, save_sae_to_hub_cache, tiny_gemma2, toy_safety_data

DS = {"train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 1,
      "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 0},
      "optimizer": {"type": "AdamW", "params": {"lr": 1e-3, "torch_adam": True}}}
NAME, SAES = "tiny-gemma2", "local-org/zero3-saes"  # Gemma-2: sandwich norms, so readers and writers are mapped


def lora_state(model) -> dict:
    params = [(n.removeprefix("module."), p) for n, p in model.named_parameters() if "lora_" in n]
    with deepspeed.zero.GatheredParameters([p for _, p in params if hasattr(p, "ds_id")], modifier_rank=None):
        return {n: p.detach().clone() for n, p in params}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def main(out: str, cases: list[str], workdir: str) -> None:
    deepspeed.init_distributed(dist_backend="gloo", timeout=datetime.timedelta(seconds=120))
    rank = dist.get_rank()
    torch.set_num_threads(1)
    tokenizer = build_tokenizer()
    aligned, unaligned, _ = toy_safety_data(n=40, seed=0)  # 5 selection batches per side: uneven shards
    folder = os.path.join(workdir, NAME)
    if rank == 0:
        model = tiny_gemma2(tokenizer)
        model.save_pretrained(folder)
        g = torch.Generator().manual_seed(1)
        for layer in (1, 2):
            w = torch.nn.functional.normalize(torch.randn(256, 64, generator=g), dim=1)
            sae = make_sae(w, f"blocks.{layer}.hook_resid_post", NAME, w_enc=w.T * 0.5, b_enc=torch.full((256,), 0.02))
            save_sae_to_hub_cache(sae, SAES, f"layer_{layer}", os.environ["HF_HUB_CACHE"])
    dist.barrier()
    config = SAILSConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
                         top_k=8, sae_release=SAES, sae_ids={1: "layer_1", 2: "layer_2"})

    def load():
        model = AutoModelForCausalLM.from_pretrained(folder)
        model.config._name_or_path = f"local-org/{NAME}"
        return model

    plain_selected = select_features(load(), tokenizer, config, aligned, unaligned, show_progress=False)
    plain_init = lora_state(get_peft_model(load(), copy.deepcopy(plain_selected)))
    hf_ds_config = HfDeepSpeedConfig(DS)  # noqa: F841  (alive: from_pretrained now partitions under zero.Init)

    def engine_of(peft_model):
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        return deepspeed.initialize(model=peft_model, config=DS, model_parameters=trainable)[0]

    def train_step(engine) -> float:
        ids = torch.randint(10, 100, (2, 16), generator=torch.Generator().manual_seed(rank))
        loss = engine(input_ids=ids, labels=ids).loss
        engine.backward(loss)
        engine.step()
        return loss.item()

    def select_no_engine():
        model = load()
        weight = model.model.layers[1].input_layernorm.weight
        assert weight.numel() == 0 and weight.ds_numel == 64, "not partitioned"
        return {"equal": select_features(model, tokenizer, config, aligned, unaligned, show_progress=False).features
                == plain_selected.features}

    trained = {}

    def get_peft_model_case():
        peft_model = get_peft_model(load(), copy.deepcopy(plain_selected))
        equal = same(lora_state(peft_model), plain_init)
        engine = engine_of(peft_model)
        result = {"equal": equal and same(lora_state(engine), plain_init), "loss": train_step(engine)}
        trained["get_peft_model"] = lora_state(engine)
        return result

    def two_step_engine():
        """Initialised after deepspeed.initialize: the optimizer's own fp32 partitions must get the init too, or
        the first step copies PEFT's default init back (seen with a GatheredParameters-only prototype)."""
        peft_model = get_peft_model(load(), plain_selected.stock_lora_config())
        engine = engine_of(peft_model)
        initialize_sails_weights(engine, config=copy.deepcopy(plain_selected), show_progress=False)
        result = {"equal": same(lora_state(engine), plain_init), "loss": train_step(engine)}
        if "get_peft_model" in trained:  # the same step from the same init gives the same weights
            result["trained_equal"] = same(lora_state(engine), trained["get_peft_model"])
        return result

    def select_engine():
        peft_model = get_peft_model(load(), plain_selected.stock_lora_config())
        engine = engine_of(peft_model)
        selected = select_features(peft_model.get_base_model(), tokenizer, config, aligned, unaligned,
                                   show_progress=False)
        return {"equal": selected.features == plain_selected.features, "loss": train_step(engine)}

    runners = {"select_no_engine": select_no_engine, "get_peft_model": get_peft_model_case,
               "two_step_engine": two_step_engine, "select_engine": select_engine}
    results = {}
    for case in cases:
        try:
            results[case] = runners[case]()
        except Exception as error:  # noqa: BLE001  (recorded: the test judges the message)
            results[case] = {"error": f"{type(error).__name__}: {error}",
                             "where": traceback.format_exc().strip().splitlines()[-3].strip()}
    everyone = [None] * dist.get_world_size()
    dist.all_gather_object(everyone, results)
    if rank == 0:
        with open(out, "w") as f:
            json.dump(everyone, f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2].split(","), os.path.dirname(os.path.abspath(sys.argv[1])))
