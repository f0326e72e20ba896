"""Two processes under `accelerate launch` (gloo on CPU) end with the same SAILS init and train in step."""

import json
import os
import subprocess
from pathlib import Path

import pytest
import torch
from conftest import HUB_CACHE


@pytest.mark.slow
def test_two_processes_agree(tmp_path, planted_saes, tokenizer):
    """Two processes split the selection data and end with the features (and SAE fit) of one process on all the
    data, bit for bit; their inits agree, also through DDP, and they train in step."""
    from peft_sails import SAILSConfig, select_features
    from peft_sails.offline import tiny_llama, toy_safety_data

    out = tmp_path / "results.json"
    script = Path(__file__).with_name("distributed_sails.py")
    accelerate = Path(os.sys.executable).with_name("accelerate")
    subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517",
                    str(script), str(out)], check=True, timeout=600,
                   env={**os.environ, "HF_HUB_CACHE": HUB_CACHE, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    results = json.loads(out.read_text())
    assert [r["rank"] for r in results] == [0, 1] and all(r["world"] == 2 for r in results)
    assert results[0]["features"] == results[1]["features"]
    aligned, unaligned, _ = toy_safety_data(n=48, seed=0)  # as distributed_sails.py
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each launched process: matmul results may depend on the thread count
    single = select_features(tiny_llama(tokenizer), tokenizer, SAILSConfig(
        r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "o_proj"], top_k=8,
        sae_release="local-org/tiny-llama-saes", sae_ids={1: "layer_1", 2: "layer_2"}), aligned, unaligned,
        show_progress=False)
    torch.set_num_threads(threads)
    as_json = lambda value: json.loads(json.dumps(value))  # noqa: E731  (int keys -> str, as in the results)
    assert all(r["features"] == as_json(single.features) and r["sae_fit"] == as_json(single.sae_fit)
               for r in results)
    assert results[0]["init"] == results[1]["init"]
    assert all(r["two_step"] == r["init"] for r in results)  # DDP-wrapped init == plain init
    assert results[0]["trained"] == results[1]["trained"] != results[0]["init"]


@pytest.mark.slow
def test_recipe_under_accelerate_launch(tmp_path):
    """The tiny recipe with two processes: both select the same features, only the main process writes the card."""
    from peft_sails import SAILSConfig
    from peft_sails.world import WorldArguments, build_offline_world

    world = build_offline_world(WorldArguments(output_dir=str(tmp_path / "world"), sae_repo="local-org/dist-saes",
                                               n_train=32, base_steps=10, d_sae=64))
    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "adapter"
    accelerate = Path(os.sys.executable).with_name("accelerate")
    subprocess.run([str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                    "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29518",
                    str(root / "trl_recipes" / "sails_sft.py"), "--config", str(root / "trl_recipes" / "tiny-offline.yaml"),
                    "--model_name_or_path", world.model_dir, "--harmful_dataset", world.harmful_dir,
                    "--benign_dataset", world.benign_dir, "--sae_release", world.sae_repo, "--output_dir", str(out),
                    "--max_steps", "3", "--top_k", "8"], check=True, timeout=600,
                   env={**os.environ, "HF_HUB_CACHE": HUB_CACHE, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"})
    config = SAILSConfig.from_pretrained(str(out))
    assert sorted(config.features) == [1, 2] and "## Chosen SAE features" in (out / "README.md").read_text()
