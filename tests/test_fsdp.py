"""The tiny recipe under FSDP2 with the shipped accelerate config, two processes, gloo on the CPU: SAILS initialises
on whole weights before the model is sharded, trains on DTensor shards, and saves a plain LoRA that plain peft, in a
fresh process, reloads with the outputs of the gathered trained model."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import HUB_CACHE

ROOT = Path(__file__).resolve().parents[1]
SCALE = ["--max_steps", "3", "--top_k", "8", "--selection_samples", "16"]

RELOAD_WITHOUT_PLUGIN = textwrap.dedent("""
    import sys, torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    model_id, adapter, gathered, out = sys.argv[1:5]
    ids = torch.load(gathered)["ids"]
    with torch.no_grad():
        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_id, dtype=torch.float32), adapter)
        logits = model(input_ids=ids).logits
    lora = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
    assert "peft_sails" not in sys.modules
    torch.save({"logits": logits, "lora": lora}, out)
""")


def _run(args, env):
    result = subprocess.run(args, env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{args[:2]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"


@pytest.mark.slow
def test_recipe_under_fsdp2(tmp_path):
    """`accelerate launch --config_file trl_recipes/accelerate_configs/fsdp2.yaml --num_processes 2` around the
    recipe (through tests/fsdp_sails.py, which records from inside the run and gathers the trained model)."""
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from peft_sails import SAILSConfig
    from peft_sails.world import WorldArguments, build_offline_world

    world = build_offline_world(WorldArguments(output_dir=str(tmp_path / "world"), sae_repo="local-org/fsdp-saes",
                                               n_train=32, base_steps=10, d_sae=64))
    out, records = tmp_path / "adapter", tmp_path / "records"
    records.mkdir()
    env = {**os.environ, "HF_HUB_CACHE": HUB_CACHE, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    accelerate = Path(sys.executable).with_name("accelerate")
    _run([str(accelerate), "launch", "--config_file", str(ROOT / "trl_recipes" / "accelerate_configs" / "fsdp2.yaml"),
          "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", "29519",
          str(ROOT / "tests" / "fsdp_sails.py"), str(records),
          "--config", str(ROOT / "trl_recipes" / "tiny-offline.yaml"), "--model_name_or_path", world.model_dir,
          "--harmful_dataset", world.harmful_dir, "--benign_dataset", world.benign_dir, "--sae_release", world.sae_repo,
          "--output_dir", str(out), *SCALE], env)
    ranks = [json.loads((records / f"rank{i}.json").read_text()) for i in range(2)]
    gathered = torch.load(records / "gathered.pt")

    # accelerate's FSDP2 path ran (the Trainer's FSDP branch, fully_shard on every decoder layer and the root)
    assert [r["rank"] for r in ranks] == [0, 1] and all(r["world"] == 2 for r in ranks)
    assert all(r["accelerator_distributed_type"] == "DistributedType.FSDP" and r["trainer_is_fsdp"] and r["fsdp2"]
               for r in ranks), f"not FSDP2: {[(r['accelerator_distributed_type'], r['fsdp2']) for r in ranks]}"
    assert all({"FSDPLlamaDecoderLayer", "FSDPPeftModel"} <= set(r["fsdp_units"]) for r in ranks)
    assert all(r["n_dtensor_params"] == r["n_params"] for r in ranks)  # base and LoRA weights all sharded

    # both processes selected the same features and initialised the same weights, on whole (unsharded) parameters
    sidecar = json.loads((out / "sails_config.json").read_text())
    assert ranks[0]["features"] == ranks[1]["features"] == sidecar["features"]
    assert ranks[0]["init_sha256"] == ranks[1]["init_sha256"]
    assert all(h["type"] == "Parameter" for r in ranks for h in r["held_at_init"].values())
    # ... and that init is SAILS's, bit for bit what one process computes from the saved features
    single = get_peft_model(AutoModelForCausalLM.from_pretrained(world.model_dir, dtype=torch.float32),
                            SAILSConfig.from_pretrained(str(out)))
    single_init = {n: p.detach() for n, p in single.named_parameters() if "lora_" in n}
    assert single_init.keys() == gathered["init"].keys()
    assert all(torch.equal(single_init[n], gathered["init"][n]) for n in single_init)

    # during training every LoRA weight was a DTensor sharded on dim 0, each process holding half of the rows
    for name, held in ranks[0]["held_at_step_1"].items():
        other = ranks[1]["held_at_step_1"][name]
        assert held["type"] == other["type"] == "DTensor" and held["placements"] == other["placements"] == ["S(0)"]
        assert held["local_shape"][0] + other["local_shape"][0] == held["shape"][0]
        assert held["local_shape"][1:] == held["shape"][1:]

    # saved: plain LoRA, card by the main process, and training happened
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["peft_type"] == "LORA" and adapter_config["init_lora_weights"] is True
    assert "## Chosen SAE features" in (out / "README.md").read_text()
    assert json.loads((out / "sails_training.json").read_text())["steps"] == 3
    trained = gathered["trained"]
    assert trained.keys() == gathered["init"].keys()
    assert all(not torch.equal(trained[n], gathered["init"][n]) for n in trained)

    # plain peft in a fresh process: the gathered weights, and the logits of the gathered and of the sharded model
    script = tmp_path / "reload.py"
    script.write_text(RELOAD_WITHOUT_PLUGIN)
    _run([sys.executable, str(script), world.model_dir, str(out), str(records / "gathered.pt"),
          str(tmp_path / "reloaded.pt")], env)
    reloaded = torch.load(tmp_path / "reloaded.pt")
    assert reloaded["lora"].keys() == trained.keys()
    assert all(torch.equal(reloaded["lora"][n], trained[n]) for n in trained)
    torch.testing.assert_close(reloaded["logits"], gathered["gathered_logits"], rtol=0, atol=1e-6)
    torch.testing.assert_close(reloaded["logits"], gathered["sharded_logits"], rtol=0, atol=1e-6)
