"""PEFT's data-driven LoRA inits and the refusal-direction control as benchmark methods: each builds through PEFT's
API on the run's data, leaves the step-0 model unchanged, differs from LoRA's default init, and saves an adapter that
plain PEFT loads on the original base model."""

import copy

import pytest
import torch
from peft import PeftModel
from peft.tuners.lora import LoraLayer

from peft_sails.bench.corpus import CorpusConfig
from peft_sails.bench.methods import METHODS, middle_layers, prepare, save_trained, selection_data, trainable_model
from peft_sails.bench.peers import chat_batches
from peft_sails.bench.runner import TrainSettings, alignment_data, run_alignment, trainable_share
from peft_sails.bench.world import WorldConfig, build_world
from peft_sails.controls import example_means

TINY_WORLD = WorldConfig(  # as in test_bench_run.py
    corpus=CorpusConfig(n_pretrain_harmful=200, n_pretrain_benign=200, n_pretrain_echo=50, n_test=16, n_validation=16),
    hidden_size=32, intermediate_size=64, num_heads=4, pretrain_steps=10, d_sae=64, sae_k=4, sae_epochs=1)
PEERS = ["eva", "pissa", "olora", "corda", "loraga", "lora-mlp-up"]
BASE_CHANGING = ["pissa", "olora", "corda", "loraga"]
R, ALPHA = 8, 16


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    world = build_world(TINY_WORLD, tmp_path_factory.mktemp("peers"))
    corpus, tokenizer, base = world.corpus(), world.tokenizer(), world.model()
    train_data = alignment_data(corpus, n_train=4, seed=0)
    batch = chat_batches(tokenizer, train_data.select(range(4)))[0]
    return world, corpus, tokenizer, base, train_data, batch


def build(name, world):
    w, corpus, tokenizer, base, train_data, _ = world
    prepared = prepare(METHODS[name], w, base, tokenizer, corpus, R, ALPHA)
    return trainable_model(METHODS[name], prepared, base, 0, tokenizer, train_data)


def logits(model, batch):
    model.eval()
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


def lora_layers(model):
    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer) and "default" in m.lora_A}


@pytest.mark.parametrize("name", PEERS)
def test_peer_starts_from_the_base_model_with_its_own_init(name, world):
    _, _, _, base, _, batch = world
    model = build(name, world)
    assert (logits(model, batch) - logits(base, batch)).abs().max() < 1e-4  # the step-0 model is the base model
    layers = lora_layers(model)
    originals = dict(base.named_modules())
    for module_name, layer in layers.items():
        a, b = layer.lora_A["default"].weight.double(), layer.lora_B["default"].weight.double()
        w = originals[module_name.removeprefix("base_model.model.")].weight.double()
        if name in BASE_CHANGING:  # W = W_res + s·B·A, with B != 0
            assert b.abs().max() > 0 and not torch.allclose(layer.base_layer.weight.double(), w)
            assert torch.allclose(layer.base_layer.weight.double() + layer.scaling["default"] * b @ a, w, atol=1e-5)
        else:
            assert b.abs().max() == 0
    q = layers.get("base_model.model.model.layers.0.self_attn.q_proj")
    if q is not None:
        a, b = q.lora_A["default"].weight.double(), q.lora_B["default"].weight.double()
    if name == "pissa":  # A = sqrt(S / scaling) Vh of the top-r singular triplets of W (up to signs)
        _, s, vh = torch.linalg.svd(base.model.layers[0].self_attn.q_proj.weight.double())
        assert torch.allclose(a.abs(), ((s[:R, None] / q.scaling["default"]).sqrt() * vh[:R]).abs(), atol=1e-5)
    elif name == "olora":  # B = the first r columns of Q in W = QR
        assert torch.allclose(b.T @ b, torch.eye(R, dtype=b.dtype), atol=1e-5)
    elif name in ("eva", "loraga"):  # A's rows are singular vectors (of the inputs; of the gradient)
        assert torch.allclose(a @ a.T, torch.eye(a.shape[0], dtype=a.dtype), atol=1e-4)
    share, lora_share = trainable_share(model), trainable_share(build("lora", world))
    if name == "lora-mlp-up":
        expected = {f"base_model.model.model.layers.{i}.mlp.up_proj" for i in middle_layers(4)}
        assert set(layers) == expected and middle_layers(4) == [1, 2] and share < lora_share
    elif name == "eva":  # ranks redistributed (rho=2): at most 2r per module, about the same budget
        assert 0 < share <= 2 * lora_share and max(layer.r["default"] for layer in layers.values()) <= 2 * R
    else:
        assert share == pytest.approx(lora_share)


@pytest.mark.parametrize("name", PEERS)
def test_trained_peer_adapter_loads_on_the_original_base_with_plain_peft(name, world, tmp_path):
    _, _, _, base, _, batch = world
    model = build(name, world)
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    labels = batch["input_ids"].masked_fill(batch["attention_mask"] == 0, -100)
    for _ in range(2):
        model(**batch, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    trained = logits(model, batch)
    assert (trained - logits(base, batch)).abs().max() > 1e-3  # training changed the model
    share = trainable_share(model)
    save_trained(METHODS[name], model, tmp_path)
    assert (logits(model, batch) - trained).abs().max() == 0 and trainable_share(model) == share  # left as it was
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path))
    assert (logits(loaded, batch) - trained).abs().max() < 1e-4
    if name in BASE_CHANGING:  # PEFT's conversion: [A | A0], [B | -B0]
        assert loaded.peft_config["default"].r == 2 * R


def test_refusal_direction_control_holds_the_difference_of_means(world):
    w, corpus, tokenizer, base, train_data, batch = world
    prepared = prepare(METHODS["refusal-dir"], w, base, tokenizer, corpus, R, ALPHA)
    basis = prepared.subspace.basis.double()
    assert basis.shape == (R, TINY_WORLD.hidden_size)
    assert torch.allclose(basis @ basis.T, torch.eye(R, dtype=basis.dtype), atol=1e-5)
    harmful, benign = selection_data(corpus, "prompt")
    scope = copy.copy(prepared.config)
    scope.token_scope = "last_prompt"
    layers = sorted(w.sae_ids)
    h, b = example_means(base, tokenizer, scope, harmful, layers), example_means(base, tokenizer, scope, benign, layers)
    for layer in layers:
        direction = torch.nn.functional.normalize((h[layer].mean(0) - b[layer].mean(0)).double(), dim=0)
        assert (basis @ direction).norm() == pytest.approx(1.0, abs=1e-4)
    model = trainable_model(METHODS["refusal-dir"], prepared, base, 0, tokenizer, train_data)
    assert (logits(model, batch) - logits(base, batch)).abs().max() < 1e-4


@pytest.mark.slow
def test_run_alignment_trains_and_saves_a_peer(world, tmp_path):
    w, corpus, tokenizer, base, _, batch = world
    method = METHODS["loraga"]
    prepared = prepare(method, w, base, tokenizer, corpus, R, ALPHA)
    points, share, *_ = run_alignment(method, prepared, base, tokenizer, corpus, n_train=2, seed=0, lr=1e-3,
                                  settings=TrainSettings(steps=2, batch_size=4), splits=["id"],
                                  work_dir=tmp_path / "work", save_dir=tmp_path / "adapter", eval_steps=[2])
    assert set(points) == {2} and 0 < share < 1
    loaded = PeftModel.from_pretrained(copy.deepcopy(base), str(tmp_path / "adapter"))
    assert loaded.peft_config["default"].r == 2 * R and torch.isfinite(logits(loaded, batch)).all()


def test_the_inits_expected_warnings_stay_out_of_the_output(recwarn):
    import warnings

    from peft_sails.bench.peers import _expected_warnings_off

    with _expected_warnings_off():
        warnings.warn("PiSSA changes the base weights of the model and should thus not be used with other adapters.")
        warnings.warn("something else")
    assert [str(w.message) for w in recwarn] == ["something else"]
