"""The offline replicas of the recipes' Hub files (tests/replica.py) load through the real loaders, offline.

Models and SAEs are written into conftest's Hub cache (HF_HUB_CACHE / HF_HUB_OFFLINE are set before anything imports
huggingface_hub) and removed again at the end of the module; datasets are checked in a subprocess with the
environment a user would have after a first download.
"""

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import HUB_CACHE
from huggingface_hub import hf_hub_download, scan_cache_dir, try_to_load_from_cache
from huggingface_hub.utils.sha import git_hash
from safetensors import safe_open

import replica
from replica import (
    BENIGN_ID,
    GEMMA2_CHAT_TEMPLATE,
    GEMMA2_CHAT_TEMPLATE_SHA256,
    HARMFUL_ID,
    LLAMA31_ID,
    llm_lat_replica,
    repo_folder,
    write_hub_repo,
)

ROOT = Path(__file__).resolve().parents[1]
GEMMA_2B, GEMMA_9B = "google/gemma-2-2b-it", "google/gemma-2-9b-it"


def test_write_hub_repo_lays_files_out_as_huggingface_hub(tmp_path):
    big = tmp_path / "weights.safetensors"
    big.write_bytes(os.urandom(3000))
    moved = tmp_path / "params.npz"
    moved.write_bytes(b"npz" * 100)
    snapshot = write_hub_repo(tmp_path / "hub", "org/name", {"config.json": b'{"a": 1}\n', "model.safetensors": big,
                                                             "layer_1/width_16k/x/params.npz": moved}, move=False)
    write_hub_repo(tmp_path / "hub", "org/name", {"sub/dir/moved.npz": moved}, move=True)  # same snapshot, moved
    repo = repo_folder(tmp_path / "hub", "org/name")
    commit = (repo / "refs" / "main").read_text()
    assert len(commit) == 40 and int(commit, 16) >= 0 and snapshot == repo / "snapshots" / commit
    assert not moved.exists() and big.exists()
    expected_blob = {"config.json": git_hash(b'{"a": 1}\n'),  # small text: git blob sha1; LFS types: sha256
                     "model.safetensors": hashlib.sha256(big.read_bytes()).hexdigest(),
                     "layer_1/width_16k/x/params.npz": hashlib.sha256(b"npz" * 100).hexdigest(),
                     "sub/dir/moved.npz": hashlib.sha256(b"npz" * 100).hexdigest()}
    for path, blob in expected_blob.items():
        entry = snapshot / path
        target = os.readlink(entry)
        assert entry.is_symlink() and not os.path.isabs(target)
        assert target == os.path.relpath(repo / "blobs" / blob, entry.parent)  # huggingface_hub's _create_symlink
        assert entry.resolve() == (repo / "blobs" / blob).resolve()
        assert hf_hub_download("org/name", path, cache_dir=tmp_path / "hub", local_files_only=True) == str(entry)
    cached = try_to_load_from_cache("org/name", "config.json", cache_dir=tmp_path / "hub")
    assert cached == str(snapshot / "config.json")
    info = scan_cache_dir(tmp_path / "hub")
    assert not info.warnings and [r.repo_id for r in info.repos] == ["org/name"]
    assert {f.file_name for r in info.repos for rev in r.revisions for f in rev.files} == {
        "config.json", "model.safetensors", "params.npz", "moved.npz"}
    assert not list((repo / "blobs").glob("*.incomplete"))
    assert len(list((repo / "blobs").iterdir())) == 3  # one blob for the two identical .npz


def test_templates_are_the_real_ones():
    assert hashlib.sha256(GEMMA2_CHAT_TEMPLATE.encode()).hexdigest() == GEMMA2_CHAT_TEMPLATE_SHA256
    template = replica.LLAMA31_CHAT_TEMPLATE
    assert len(template) == 4614 and template.count("\n") == 109 and template.endswith("{%- endif %}\n")
    assert '{%- set date_string = "26 Jul 2024" %}' in template and "strftime_now" not in template


@pytest.fixture(scope="module")
def models():
    """The three model replicas in conftest's Hub cache, removed after the module."""
    snapshots = {GEMMA_2B: replica.gemma2_replica(HUB_CACHE, "2b"), GEMMA_9B: replica.gemma2_replica(HUB_CACHE, "9b"),
                 LLAMA31_ID: replica.llama31_replica(HUB_CACHE)}
    yield snapshots
    for repo_id in snapshots:
        shutil.rmtree(repo_folder(HUB_CACHE, repo_id), ignore_errors=True)


def _load(repo_id):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoTokenizer.from_pretrained(repo_id), AutoModelForCausalLM.from_pretrained(repo_id, dtype=torch.bfloat16)


@pytest.mark.parametrize("repo_id, model_type, hidden, layers, tokenizer_class", [
    (GEMMA_2B, "gemma2", 2304, 21, "GemmaTokenizer"), (GEMMA_9B, "gemma2", 3584, 31, "GemmaTokenizer"),
    (LLAMA31_ID, "llama", 4096, 31, "TokenizersBackend"),  # PreTrainedTokenizerFast is TokenizersBackend in v5
])
def test_model_replica_loads_offline(models, repo_id, model_type, hidden, layers, tokenizer_class):
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    tokenizer, model = _load(repo_id)
    config = model.config
    assert (config.model_type, config.hidden_size, config.num_hidden_layers) == (model_type, hidden, layers)
    assert type(tokenizer).__name__ == tokenizer_class and tokenizer.chat_template
    assert config.vocab_size == len(tokenizer) and config.bos_token_id == tokenizer.bos_token_id
    assert tokenizer.eos_token_id in config.eos_token_id
    assert model.dtype == torch.bfloat16 and model.name_or_path == repo_id
    q = model.model.layers[0].self_attn
    assert q.q_proj.weight.shape == (64, hidden) and q.k_proj.weight.shape == (32, hidden)
    assert q.o_proj.weight.shape == (hidden, 64)
    real = json.loads((ROOT / "trl_recipes" / "configs" / replica.MODEL_CONFIGS[repo_id]).read_text())
    raw = json.loads((models[repo_id] / "config.json").read_text())
    for key in ("rms_norm_eps", "rope_theta", "max_position_embeddings", "attn_logit_softcapping",
                "final_logit_softcapping", "query_pre_attn_scalar", "sliding_window", "rope_scaling",
                "tie_word_embeddings", "torch_dtype", "hidden_act"):
        assert raw.get(key) == real.get(key), key
    assert (models[repo_id] / "model.safetensors").stat().st_size < 300e6
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "How do I boil an egg?"}],
                                        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        logits = model(**ids).logits
    assert logits.shape == (1, ids["input_ids"].shape[1], config.vocab_size) and torch.isfinite(logits).all()


def test_gemma_tokenizer_is_gemma_it(models):
    tokenizer, _ = _load(GEMMA_2B)
    chat = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi there "},
            {"role": "user", "content": "How are you?"}]
    rendered = tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    assert rendered == ("<bos><start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\nHi there<end_of_turn>\n"
                        "<start_of_turn>user\nHow are you?<end_of_turn>\n<start_of_turn>model\n")
    with pytest.raises(Exception, match="System role not supported"):
        tokenizer.apply_chat_template([{"role": "system", "content": "x"}] + chat, tokenize=False)
    assert (tokenizer.pad_token, tokenizer.pad_token_id) == ("<pad>", 0)
    assert (tokenizer.eos_token_id, tokenizer.bos_token_id) == (1, 2)
    assert tokenizer.convert_tokens_to_ids(["<start_of_turn>", "<end_of_turn>"]) == [106, 107]
    ids = tokenizer(rendered, add_special_tokens=False).input_ids
    assert ids[:2] == [2, 106] and tokenizer.decode(ids) == rendered
    assert tokenizer("Hi").input_ids[0] == 2  # add_bos_token, as the real tokenizer


def test_llama_tokenizer_is_llama31_instruct(models):
    tokenizer, model = _load(LLAMA31_ID)
    header = "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n" \
             "Today Date: 26 Jul 2024\n\n"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": " Hello "}], tokenize=False,
                                             add_generation_prompt=True)
    assert rendered == (header + "<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHello<|eot_id|>"
                        "<|start_header_id|>assistant<|end_header_id|>\n\n")
    with_system = tokenizer.apply_chat_template(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello!"}], tokenize=False)
    assert with_system == (header + "Be brief.<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                           "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>")
    assert tokenizer.pad_token is None and tokenizer.eos_token == "<|eot_id|>"
    ids = tokenizer.convert_tokens_to_ids(["<|begin_of_text|>", "<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"])
    assert model.config.bos_token_id == ids[0] and model.config.eos_token_id == ids[1:]
    assert ids[0] == len(tokenizer) - 256  # the 256 special tokens close the vocabulary, as in the real one
    encoded = tokenizer(rendered, add_special_tokens=False).input_ids
    assert tokenizer.decode(encoded) == rendered and tokenizer("Hi").input_ids[0] == ids[0]


def test_norm_weights_are_far_from_one(models):
    for repo_id, offset in ((GEMMA_2B, 1.0), (GEMMA_9B, 1.0), (LLAMA31_ID, 0.0)):  # Gemma scales by 1 + w
        _, model = _load(repo_id)
        scales = [p.float() + offset for name, p in model.named_parameters() if name.endswith("norm.weight")]
        assert len(scales) == (4 if offset else 2) * model.config.num_hidden_layers + 1
        for s in scales:
            assert s.min() < 0.4 and s.max() > 3.5 and s.min() > 0.15  # 0.2..4 in every norm
        assert not torch.equal(scales[0], scales[1])


@pytest.fixture(scope="module")
def sae_repos():
    created = []
    yield created
    for repo_id in created:
        shutil.rmtree(repo_folder(HUB_CACHE, repo_id), ignore_errors=True)


def _residuals(repo_id, layer):
    tokenizer, model = _load(repo_id)
    acts = []
    handle = model.model.layers[layer].register_forward_hook(
        lambda _m, _i, out: acts.append((out[0] if isinstance(out, tuple) else out)[0, 1:].float()))
    for row in replica.benign_rows(4, seed=7):
        chat = [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
        with torch.no_grad():
            model(**tokenizer.apply_chat_template(chat, return_tensors="pt", return_dict=True))
    handle.remove()
    return torch.cat(acts)


@pytest.mark.slow
@pytest.mark.parametrize("release, sae_id, layer, model_id, sae_model, d_in, d_sae", [
    ("gemma-scope-2b-pt-res-canonical", "layer_5/width_16k/canonical", 5, GEMMA_2B, "gemma-2-2b", 2304, 16384),
    ("gemma-scope-9b-pt-res-canonical", "layer_10/width_16k/canonical", 10, GEMMA_9B, "gemma-2-9b", 3584, 16384),
    ("llama_scope_lxr_8x", "l10r_8x", 10, LLAMA31_ID, "meta-llama/Llama-3.1-8B", 4096, 8192),
])
def test_sae_replica_loads_with_the_release_name(models, sae_repos, release, sae_id, layer, model_id, sae_model,
                                                 d_in, d_sae):
    from sae_lens import SAE

    calibration = replica.residual_stats(models[model_id], [layer])
    if release == replica.LLAMA_SCOPE_RELEASE:
        written = replica.llama_scope_replica(HUB_CACHE, [layer], calibration=calibration)[layer]
        hyper = json.loads((written / "hyperparams.json").read_text())
        assert hyper["d_model"] == 4096 and hyper["hook_point_in"] == f"blocks.{layer}.hook_resid_post"
        with safe_open(written / "checkpoints" / "final.safetensors", "pt") as f:
            assert {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()} == {
                "encoder.weight": (d_sae, 4096), "encoder.bias": (d_sae,), "decoder.weight": (4096, d_sae),
                "decoder.bias": (4096,)}
    else:
        written = replica.gemma_scope_replica(HUB_CACHE, release.split("-")[2], [layer], calibration=calibration)[layer]
        assert written.parent.name.startswith("average_l0_")
        with np.load(written) as params:
            assert {k: (params[k].shape, params[k].dtype) for k in params} == {
                "W_enc": ((d_in, d_sae), np.float32), "W_dec": ((d_sae, d_in), np.float32),
                "b_enc": ((d_sae,), np.float32), "b_dec": ((d_in,), np.float32), "threshold": ((d_sae,), np.float32)}
            assert (params["threshold"] > 0).all()
            assert np.allclose(np.linalg.norm(params["W_dec"], axis=1), 1, atol=1e-5)
    repo_id = replica.resolve_sae(release, sae_id)[0]
    sae_repos.append(repo_id)
    assert written.is_relative_to(repo_folder(HUB_CACHE, repo_id) / "snapshots")

    sae = SAE.from_pretrained(release, sae_id)  # the release name, through sae-lens' loader, offline
    meta = sae.cfg.metadata
    assert (meta.hook_name, meta.model_name, sae.cfg.d_in, sae.cfg.d_sae) == (
        f"blocks.{layer}.hook_resid_post", sae_model, d_in, d_sae)
    with torch.no_grad():
        l0 = (sae.encode(_residuals(model_id, layer)) > 0).sum(-1).float()
    assert 20 <= l0.median() <= 300, l0.median()  # a realistic number of latents fires on the model replica


def test_llm_lat_datasets_load_offline_in_a_fresh_process(tmp_path):
    hub, cache = tmp_path / "hub", tmp_path / "datasets"
    prepared = llm_lat_replica(hub, cache, n_rows=24)
    assert prepared[HARMFUL_ID].relative_to(cache).parts[:3] == ("LLM-LAT___harmful-dataset", "default", "0.0.0")
    for repo_id in (HARMFUL_ID, BENIGN_ID):
        snapshot = repo_folder(hub, repo_id, "dataset") / "snapshots" / prepared[repo_id].name  # hash = commit
        assert (snapshot / "data" / "train-00000-of-00001.parquet").is_symlink()
        assert "config_name: default" in (snapshot / "README.md").read_text()
    script = ("import json; from datasets import load_dataset\n"
              "out = {}\n"
              f"for name in {[HARMFUL_ID, BENIGN_ID]!r}:\n"
              "    d = load_dataset(name, split='train'); out[name] = [d.column_names, len(d), d[0]]\n"
              "print(json.dumps(out))\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(hub), "HF_DATASETS_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    out = json.loads(run.stdout.strip().splitlines()[-1])
    assert out[HARMFUL_ID][:2] == [["prompt", "rejected", "chosen"], 24]
    assert out[BENIGN_ID][:2] == [["prompt", "response", "refusal"], 24]
    harmful = out[HARMFUL_ID][2]
    assert harmful["chosen"] != harmful["rejected"] and all(harmful.values())


@pytest.mark.parametrize("recipe", ["gemma-2-2b", "gemma-2-9b", "llama-3.1-8b"])
def test_recipe_sae_ids_resolve_for_the_recipe_model(recipe):
    """Every SAE id of the recipe exists in its release, and the release belongs to the recipe's model."""
    ids = replica.recipe_sae_ids(recipe)
    assert sorted(ids) == sorted(replica.read_recipe(recipe)["sae_layers"])
