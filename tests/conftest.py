"""Shared offline world: tiny models, toy data, and SAEs saved into a temporary Hugging Face cache.

The cache variables are set before anything imports huggingface_hub (it reads them once, at import).
"""

import os
import tempfile

HUB_CACHE = tempfile.mkdtemp(prefix="sails-hub-")
os.environ["HF_HUB_CACHE"] = HUB_CACHE
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

import peft_sails  # noqa: E402,F401  (registers the tuner)
from peft_sails import SAILSConfig  # noqa: E402
from peft_sails.data import iter_scored_batches  # noqa: E402
from peft_sails.offline import (  # noqa: E402
    build_tokenizer,
    make_sae,
    save_sae_to_hub_cache,
    tiny_gemma2,
    tiny_llama,
    toy_safety_data,
)
from peft_sails.residual import ResidualSite, collect_residuals  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))  # as the subprocesses of the tests will
SAE_REPO = "local-org/tiny-llama-saes"
LAYERS = (1, 2)
D_SAE = 256
# Planted features (see `planted_sae`): strong aligned-only, a negative (unaligned-only) one, and a rare one.
PLANTED_ALIGNED = {42: 8.0, 17: 4.0, 99: 2.0}
PLANTED_UNALIGNED = 7
RARE = 200


@pytest.fixture(scope="session")
def tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="session")
def data():
    return toy_safety_data(n=48, seed=0)


@pytest.fixture()
def llama(tokenizer):
    return tiny_llama(tokenizer)


def in_span(vectors: torch.Tensor, rows: torch.Tensor, tol: float = 1e-4) -> bool:
    """Whether every row of `vectors` lies in the span of `rows` (rank-revealing SVD)."""
    _, sv, vh = torch.linalg.svd(rows.double(), full_matrices=False)
    span = vh[sv > sv[0] * 1e-8]
    residual = vectors.double() - (vectors.double() @ span.T) @ span
    return residual.norm(dim=1).max().item() < tol


def sails_config(**overrides) -> SAILSConfig:
    kwargs = dict(
        r=4, lora_alpha=8, target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        sae_release=SAE_REPO, sae_ids={layer: f"layer_{layer}" for layer in LAYERS}, top_k=8,
    )
    kwargs.update(overrides)
    return SAILSConfig(**kwargs)


def scored_residuals(model, tokenizer, dataset, layer: int, config: SAILSConfig) -> torch.Tensor:
    """Residual activations at `blocks.layer.hook_resid_post` of the tokens selection scores."""
    return collect_residuals(model, ResidualSite(layer, "post"), iter_scored_batches(dataset, config, tokenizer, "cpu"))


def planted_sae(model, tokenizer, data, layer: int, model_name: str = "tiny-llama"):
    """A ReLU SAE whose top features we control.

    Features without a plan read random directions with a large positive bias: they fire on every token on
    both sides, so their rho is well below 1. Planted ids fire only on aligned (or only on unaligned) tokens
    (rho = 1) with |delta| ordered by their strength; RARE fires on a single aligned token (rho = 1, tiny delta).
    """
    aligned, unaligned, _ = data
    config = sails_config()
    xa = scored_residuals(model, tokenizer, aligned, layer, config)
    xu = scored_residuals(model, tokenizer, unaligned, layer, config)
    d = xa.shape[1]
    g = torch.Generator().manual_seed(layer)
    w_dec = torch.nn.functional.normalize(torch.randn(D_SAE, d, generator=g), dim=1)
    w_enc = w_dec.T.clone() * 0.1
    b_enc = torch.full((D_SAE,), 10.0)
    direction = torch.nn.functional.normalize(xa.mean(0) - xu.mean(0), dim=0)

    def plant(fid: int, e: torch.Tensor, fire_on: torch.Tensor, silent_on: torch.Tensor, strength: float) -> None:
        threshold = (silent_on @ e).max() + 1e-3  # a margin, so float noise never makes it fire there
        assert (fire_on @ e > threshold).any(), "toy data too weak to plant a feature"
        w_enc[:, fid] = e * strength
        b_enc[fid] = -threshold * strength
        w_dec[fid] = e

    for fid, strength in PLANTED_ALIGNED.items():
        plant(fid, direction, xa, xu, strength)
    plant(PLANTED_UNALIGNED, -direction, xu, xa, 3.0)
    for _ in range(1000):  # a direction in which one aligned token (and its exact copies) stands out
        e = torch.nn.functional.normalize(torch.randn(d, generator=g), dim=0)
        pa = xa @ e
        if pa.max() > (xu @ e).max() and (pa == pa.max()).float().mean() < 0.01:
            break
    else:
        raise AssertionError("could not plant the rare feature")
    below = pa[pa < pa.max()].max()
    w_enc[:, RARE] = e
    b_enc[RARE] = -(torch.maximum(below, (xu @ e).max()) + pa.max()) / 2
    return make_sae(w_dec, f"blocks.{layer}.hook_resid_post", model_name, w_enc=w_enc, b_enc=b_enc)


@pytest.fixture(scope="session")
def planted_saes(tokenizer, data):
    """Planted SAEs for the seed-0 tiny Llama at LAYERS, saved in the Hub cache under SAE_REPO."""
    model = tiny_llama(tokenizer)
    saes = {}
    for layer in LAYERS:
        saes[layer] = planted_sae(model, tokenizer, data, layer)
        save_sae_to_hub_cache(saes[layer], SAE_REPO, f"layer_{layer}", HUB_CACHE)
    return saes


@pytest.fixture(scope="session")
def selected_config(tokenizer, data, planted_saes):
    """A config with features selected on the planted SAEs (seed-0 tiny Llama)."""
    from peft_sails import select_features

    aligned, unaligned, _ = data
    return select_features(tiny_llama(tokenizer), tokenizer, sails_config(), aligned, unaligned, show_progress=False)


@pytest.fixture(scope="session")
def gemma_world(tokenizer, data):
    """A tiny Gemma-2 with random norm weights and a random SAE at layer 1 in the cache; returns (config, model)."""
    model = tiny_gemma2(tokenizer)
    g = torch.Generator().manual_seed(5)
    sae = make_sae(torch.randn(D_SAE, model.config.hidden_size, generator=g), "blocks.1.hook_resid_post", "tiny-gemma2")
    save_sae_to_hub_cache(sae, "local-org/tiny-gemma2-saes", "layer_1", HUB_CACHE)
    config = SAILSConfig(r=4, target_modules=["q_proj", "v_proj", "o_proj", "up_proj", "down_proj"],
                         sae_release="local-org/tiny-gemma2-saes", sae_ids={1: "layer_1"}, top_k=16)
    return config, model
