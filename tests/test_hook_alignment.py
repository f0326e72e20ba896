"""sae-lens' `blocks.L.hook_resid_post` (Gemma Scope's `layer_L`) is `hidden_states[L + 1]` of transformers:
a feature planted to be aligned-only exactly there, and not one layer earlier or later, is what selection finds."""

import torch
from conftest import D_SAE, HUB_CACHE
from peft_sails import SAILSConfig, select_features
from peft_sails.data import iter_scored_batches
from peft_sails.offline import make_sae, save_sae_to_hub_cache, tiny_gemma2

LAYER, PLANTED = 1, 77


def _hidden_states(model, tokenizer, dataset, config) -> list[torch.Tensor]:
    """transformers' `hidden_states` (one [tokens, d] tensor per index) at the tokens selection scores."""
    per_index = None
    with torch.no_grad():
        for batch in iter_scored_batches(dataset, config, tokenizer, "cpu"):
            states = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                           output_hidden_states=True).hidden_states
            rows = [h[batch.score_mask].float() for h in states]
            per_index = rows if per_index is None else [torch.cat([a, b]) for a, b in zip(per_index, rows)]
    return per_index


def test_planted_feature_at_hidden_states_l_plus_1_is_selected(tokenizer, data):
    model = tiny_gemma2(tokenizer, name="local-org/tiny-gemma2")
    config = SAILSConfig(r=4, target_modules=["q_proj"], sae_release="local-org/hook-saes",
                         sae_ids={LAYER: f"layer_{LAYER}"}, top_k=4, check_sae_model=False)
    aligned, unaligned = (_hidden_states(model, tokenizer, d, config) for d in data[:2])
    g = torch.Generator().manual_seed(0)
    d = model.config.hidden_size
    base = torch.nn.functional.normalize(aligned[LAYER + 1].mean(0) - unaligned[LAYER + 1].mean(0), dim=0)
    for _ in range(5000):  # a direction that separates aligned from unaligned tokens at L + 1 only
        e = torch.nn.functional.normalize(base + 0.5 * torch.randn(d, generator=g), dim=0)
        threshold = float((unaligned[LAYER + 1] @ e).max()) + 1e-3
        fires = {i: ((aligned[i] @ e > threshold).any(), (unaligned[i] @ e > threshold).any())
                 for i in (LAYER, LAYER + 1, LAYER + 2)}
        if fires[LAYER + 1] == (True, False) and fires[LAYER][1] and fires[LAYER + 2][1]:
            break
    else:
        raise AssertionError("no direction separates the sides at L + 1 only")
    w_dec = torch.nn.functional.normalize(torch.randn(D_SAE, d, generator=g), dim=1)
    w_enc, b_enc = w_dec.T.clone() * 0.1, torch.full((D_SAE,), 10.0)  # the others fire everywhere: rho < 1
    w_enc[:, PLANTED], b_enc[PLANTED], w_dec[PLANTED] = e, -threshold, e
    sae = make_sae(w_dec, f"blocks.{LAYER}.hook_resid_post", "tiny-gemma2", w_enc=w_enc, b_enc=b_enc)
    save_sae_to_hub_cache(sae, "local-org/hook-saes", f"layer_{LAYER}", HUB_CACHE)

    selected = select_features(model, tokenizer, config, data[0], data[1], show_progress=False)
    top = selected.features[LAYER][0]
    assert top["id"] == PLANTED and top["rho"] == 1.0 and top["delta"] > 0
    # read one layer off (hidden_states[L] or [L + 2]), the planted feature fires on unaligned tokens too
    for wrong in (LAYER, LAYER + 2):
        acts_u = torch.relu(unaligned[wrong] @ w_enc[:, PLANTED] + b_enc[PLANTED])
        assert (acts_u > 0).any()
