"""Bad inputs get an error that names the value and says what to do; nothing is changed on the way."""

import pytest
import torch
from conftest import HUB_CACHE, sails_config
from datasets import Dataset

from peft_sails import SAILSConfig, select_features
from peft_sails.offline import hub_cache_snapshot, make_sae, save_sae_to_hub_cache
from peft_sails.registration import check_peft_version

BAD_REPO = "local-org/bad-saes"


@pytest.fixture(scope="module", autouse=True)
def bad_saes():
    g = torch.Generator().manual_seed(0)
    for sae_id, d_in, hook, model in [
        ("narrow", 32, "blocks.1.hook_resid_post", "tiny-llama"),
        ("deep", 64, "blocks.9.hook_resid_post", "tiny-llama"),
        ("mlp", 64, "blocks.1.hook_mlp_out", "tiny-llama"),
        ("gemma", 64, "blocks.1.hook_resid_post", "gemma-2-2b"),
        ("layer2", 64, "blocks.2.hook_resid_post", "tiny-llama"),
    ]:
        save_sae_to_hub_cache(make_sae(torch.randn(128, d_in, generator=g), hook, model), BAD_REPO, sae_id, HUB_CACHE)


@pytest.mark.parametrize(
    "sae_ids, message",
    [
        ({1: "narrow"}, "d_in=32 but the model's hidden size is 64"),
        ({9: "deep"}, "layer 9 is out of range: the model has 4 layers"),
        ({1: "mlp"}, "'blocks.1.hook_mlp_out' is not a residual-stream hook"),
        ({1: "gemma"}, "trained on 'gemma-2-2b', but the model is 'tiny-llama'"),
        ({1: "layer2"}, "reads 'blocks.2.hook_resid_post' \\(layer 2\\); fix `sae_ids`"),
    ],
)
def test_sae_that_does_not_fit(llama, tokenizer, data, sae_ids, message):
    config = sails_config(sae_release=BAD_REPO, sae_ids=sae_ids)
    with pytest.raises(ValueError, match=message):
        select_features(llama, tokenizer, config, data[0], data[1], show_progress=False)


def test_missing_sae_offline_names_release_id_and_offline(llama, tokenizer, data):
    config = sails_config(sae_release="local-org/not-there", sae_ids={1: "layer_1"})
    with pytest.raises(FileNotFoundError, match="'layer_1' of release 'local-org/not-there'.*HF_HUB_OFFLINE is set"):
        select_features(llama, tokenizer, config, data[0], data[1], show_progress=False)


def test_top_k_larger_than_sae(llama, tokenizer, data, planted_saes):
    with pytest.raises(ValueError, match="top_k=1000 is larger than the SAE width d_sae=256"):
        select_features(llama, tokenizer, sails_config(top_k=1000), data[0], data[1], show_progress=False)


def test_bad_data(llama, tokenizer, data, planted_saes):
    config = sails_config()
    with pytest.raises(ValueError, match="The unaligned selection dataset is empty"):
        select_features(llama, tokenizer, config, data[0], data[1].select([]), show_progress=False)
    with pytest.raises(ValueError, match=r"columns \['text'\]; expected a 'messages' column"):
        select_features(llama, tokenizer, config, Dataset.from_dict({"text": ["hi"]}), data[1], show_progress=False)
    tok = tokenizer.__class__(tokenizer_object=tokenizer.backend_tokenizer)  # same vocabulary, no chat template
    assert not tok.chat_template
    with pytest.raises(ValueError, match="tokenizer has no chat_template"):
        select_features(llama, tok, config, data[0], data[1], show_progress=False)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"top_k": 0}, "`top_k` must be a positive integer, got 0"),
        ({"variance_threshold": 1.5}, r"`variance_threshold` must be in \(0, 1\], got 1.5"),
        ({"variance_threshold": 0.0}, r"`variance_threshold` must be in \(0, 1\], got 0.0"),
        ({"token_scope": "everything"}, "`token_scope` must be one of"),
        ({"init_lora_weights": "gaussian"}, "needs init_lora_weights='sails'"),
        ({"sae_release": None}, "`sae_release` is required"),
        ({"sae_ids": {}}, "`sae_ids` must map at least one layer"),
        ({"sae_ids": {"first": "x"}}, "keys must be layer indices"),
        ({"features": {7: []}}, r"layers \[7\] that are not in `sae_ids`"),
        ({"aligned_dataset": "org/x"}, "Name both `aligned_dataset` and `unaligned_dataset`"),
        ({"min_firing_rate": -0.1}, r"`min_firing_rate` must be in \[0, 1\]"),
    ],
)
def test_config_validation(overrides, message):
    with pytest.raises(ValueError, match=message):
        sails_config(**overrides)


def test_json_round_trip_restores_int_layers():
    config = SAILSConfig(sae_release="r", sae_ids={"5": "a"}, features={"5": [{"id": 1, "delta": 0.1, "rho": 1.0}]})
    assert config.sae_ids == {5: "a"} and list(config.features) == [5]


def test_unsupported_peft_version():
    with pytest.raises(ImportError, match="supports peft >= 0.21.0, < 0.22.0.*found peft 0.30.0"):
        check_peft_version("0.30.0")
    check_peft_version("0.21.2")


def test_model_from_a_cache_snapshot_is_named_after_its_repo(tokenizer, data, planted_saes, tmp_path):
    """A model loaded from `models--org--name/snapshots/<commit>` is 'name', not the commit hash."""
    from transformers import AutoModelForCausalLM

    from peft_sails.offline import tiny_llama

    snapshot = tmp_path / "models--local-org--tiny-llama" / "snapshots" / ("ab12" * 10)
    tiny_llama(tokenizer).save_pretrained(snapshot)
    model = AutoModelForCausalLM.from_pretrained(snapshot)
    config = select_features(model, tokenizer, sails_config(), data[0], data[1], show_progress=False)
    assert sorted(config.features) == [1, 2]
    renamed = tmp_path / "my-finetune"
    tiny_llama(tokenizer).save_pretrained(renamed)
    with pytest.raises(ValueError, match="but the model is 'my-finetune'.*--check_sae_model false"):
        select_features(AutoModelForCausalLM.from_pretrained(renamed), tokenizer, sails_config(), data[0], data[1],
                        show_progress=False)


def test_repo_id_of_a_non_sae_lens_format_names_the_release(llama, tokenizer, data):
    """Gemma Scope's own repo (params.npz, no cfg.json) given as `sae_release`: the cause is the format, and the
    error names the sae-lens release that reads it (not a hint to download what is already cached)."""
    folder = hub_cache_snapshot("google/gemma-scope-2b-pt-res", HUB_CACHE) / "layer_1/width_16k/average_l0_71"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.npz").write_bytes(b"")  # listed, never read
    for sae_id in ("layer_1/width_16k/average_l0_71", "layer_1/width_16k/canonical"):
        config = sails_config(sae_release="google/gemma-scope-2b-pt-res", sae_ids={1: sae_id})
        with pytest.raises(ValueError, match=r"not in sae-lens' own format.*'gemma-scope-2b-pt-res-canonical'"):
            select_features(llama, tokenizer, config, data[0], data[1], show_progress=False)


def test_own_format_repo_without_the_id_lists_its_saes(llama, tokenizer, data, planted_saes):
    config = sails_config(sae_ids={1: "layer_9"})
    with pytest.raises(FileNotFoundError, match=r"has no SAE 'layer_9'.*\['layer_1', 'layer_2'\]"):
        select_features(llama, tokenizer, config, data[0], data[1], show_progress=False)
