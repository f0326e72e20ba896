"""Stage 1: feature scoring, ranking, ties, and memory that does not grow with the data."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import LAYERS, PLANTED_ALIGNED, PLANTED_UNALIGNED, RARE, sails_config

from peft_sails import rank_features, select_features
from peft_sails.selection import FeatureStats


def test_planted_features_rank_first(selected_config):
    for layer in LAYERS:
        feats = selected_config.features[layer]
        planted = sorted(PLANTED_ALIGNED, key=PLANTED_ALIGNED.get, reverse=True)
        ids = [f["id"] for f in feats]
        assert set(ids[:4]) == {*planted, PLANTED_UNALIGNED}
        # the aligned-only ones come in order of strength (|delta| breaks the rho = 1 tie)
        assert [i for i in ids if i in PLANTED_ALIGNED] == planted
        assert all(f["rho"] == pytest.approx(1.0) for f in feats[:4])
        assert [f["rho"] for f in feats] == sorted((f["rho"] for f in feats), reverse=True)
        neg = next(f for f in feats if f["id"] == PLANTED_UNALIGNED)
        assert neg["delta"] < 0


def test_rare_feature_ties_and_min_firing_rate(tokenizer, data, planted_saes, llama):
    aligned, unaligned, _ = data
    plain = select_features(llama, tokenizer, sails_config(top_k=6), aligned, unaligned, show_progress=False)
    ids = [f["id"] for f in plain.features[1]]
    assert ids[4] == RARE  # rho = 1 like the planted ones, smallest |delta|: ranked after them, before rho < 1
    strict = select_features(llama, tokenizer, sails_config(top_k=6, min_firing_rate=0.01), aligned, unaligned,
                             show_progress=False)
    assert RARE not in [f["id"] for f in strict.features[1]]


def _stats(act_mean, abs_mean, rate, n=100):
    t = lambda v: torch.tensor(v, dtype=torch.float64) * n  # noqa: E731
    return FeatureStats(t(act_mean), t(abs_mean), t(rate), n)


def test_rank_features_tie_break_is_deterministic():
    # features 0..3 all have rho = 1; |delta| decides, then id
    a = _stats([0.5, 0.2, 0.2, 0.0, 0.1], [0.5, 0.2, 0.2, 0.0, 0.1], [0.5, 0.2, 0.2, 0.0, 1.0])
    u = _stats([0.0, 0.0, 0.0, 0.3, 0.05], [0.0, 0.0, 0.0, 0.3, 0.05], [0.0, 0.0, 0.0, 0.3, 1.0])
    ranked = rank_features(a, u, top_k=5)
    assert [f["id"] for f in ranked] == [0, 3, 1, 2, 4]
    assert ranked[1]["delta"] == pytest.approx(-0.3)
    assert ranked[4]["rho"] == pytest.approx(0.5)


def test_rank_features_no_eligible_feature():
    same = _stats([0.1, 0.2], [0.1, 0.2], [1.0, 1.0])
    with pytest.raises(ValueError, match="No SAE feature is eligible"):
        rank_features(same, same, top_k=1)


def test_token_scope_changes_what_is_scored(tokenizer, data, planted_saes, llama):
    aligned, unaligned, _ = data
    # aligned and unaligned share their prompts: on prompt tokens both sides are identical, nothing differs
    with pytest.raises(ValueError, match="No SAE feature is eligible"):
        select_features(llama, tokenizer, sails_config(token_scope="prompt"), aligned, unaligned, show_progress=False)
    whole = select_features(llama, tokenizer, sails_config(token_scope="all"), aligned, unaligned, show_progress=False)
    # all tokens: the planted and rare features are still the ones silent on one side (rho = 1), ahead of the rest
    assert {f["id"] for f in whole.features[1][:5]} == {*PLANTED_ALIGNED, PLANTED_UNALIGNED, RARE}
    assert whole.features[1][5]["rho"] < 0.5


def test_prompt_completion_format_matches_chat(tokenizer, data, planted_saes, llama, selected_config):
    from datasets import Dataset

    aligned, unaligned, _ = data

    def as_pc(ds):
        return Dataset.from_list([{"prompt": r["messages"][:1], "completion": r["messages"][1:]} for r in ds])

    pc = select_features(llama, tokenizer, sails_config(), as_pc(aligned), as_pc(unaligned), show_progress=False)
    assert pc.features == selected_config.features


@pytest.mark.slow
def test_selection_memory_does_not_grow_with_data():
    """Peak RSS of selection on 4x the data stays within 10% of 1x, each in a fresh process (the benchmark's own
    measurement; the lower of two runs, as one fresh process's peak varies by a few percent from run to run). With a
    16k-wide SAE, keeping the activations instead of running sums would add ~0.5 GB at 4x."""
    script = Path(__file__).resolve().parents[1] / "benchmarks" / "overheads.py"
    peaks = {}
    for n in (100, 400, 100, 400):
        out = subprocess.run([sys.executable, str(script), "--selection_rss", str(n), "--hidden_size", "64",
                              "--d_sae", "16384"], capture_output=True, text=True, check=True).stdout
        peak = json.loads(out.strip().splitlines()[-1])["peak_rss_kib"]
        peaks[n] = min(peaks.get(n, peak), peak)
    assert peaks[400] <= 1.10 * peaks[100], peaks


def test_all_saes_in_one_pass_selects_the_same(llama, tokenizer, data, selected_config):
    one_pass = select_features(llama, tokenizer, sails_config(saes_per_pass=2), data[0], data[1],
                               show_progress=False)
    assert one_pass.features == selected_config.features


@pytest.mark.parametrize("scope, roles", [("response", ["assistant"]), ("prompt", ["user"]),
                                          ("all", ["user", "assistant"])])
def test_scored_tokens_are_message_content_only(tokenizer, data, scope, roles):
    """No BOS, padding or chat-template token is scored: the scored tokens are exactly the words of the messages
    in scope (the word-level tokenizer makes one token per word), in batches with padding."""
    from peft_sails.data import iter_scored_batches

    rows = list(data[0].select(range(6)))
    batches = list(iter_scored_batches(rows, sails_config(token_scope=scope, selection_batch_size=3), tokenizer, "cpu"))
    assert any((b.attention_mask == 0).any() for b in batches)  # padding is present
    scored = [tokenizer.convert_ids_to_tokens(ids[mask].tolist()) for b in batches
              for ids, mask in zip(b.input_ids, b.score_mask)]
    expected = [[w for m in row["messages"] if m["role"] in roles for w in m["content"].split()] for row in rows]
    assert scored == expected


def test_last_prompt_scores_the_generation_prompt(tokenizer, data):
    from peft_sails.data import iter_scored_batches

    batch = next(iter_scored_batches(list(data[0].select(range(2))), sails_config(token_scope="last_prompt"),
                                     tokenizer, "cpu"))
    assert batch.score_mask.sum(1).tolist() == [1, 1]
    assert tokenizer.convert_ids_to_tokens(batch.input_ids[batch.score_mask].tolist()) == ["<|assistant|>"] * 2


def test_sae_fit_is_measured_and_a_poor_fit_warns(llama, tokenizer, data, selected_config, caplog):
    """The planted SAEs are not trained to reconstruct: selection records their poor fit and warns. An SAE that
    reconstructs exactly (decoder [I; -I], ReLU) has explained variance 1 and no warning."""
    from peft_sails.offline import make_sae, save_sae_to_hub_cache
    from conftest import HUB_CACHE

    assert sorted(selected_config.sae_fit) == list(LAYERS)
    for fit in selected_config.sae_fit.values():
        assert fit["explained_variance"] < 0.5 and fit["l0"] > 0 and fit["n_tokens"] > 100
    with caplog.at_level("WARNING", logger="peft_sails.selection"):
        select_features(llama, tokenizer, sails_config(sae_ids={1: "layer_1"}), data[0], data[1], show_progress=False)
    assert "explains only" in caplog.text and "min_explained_variance=50%" in caplog.text
    d = llama.config.hidden_size
    eye = torch.eye(d)
    save_sae_to_hub_cache(make_sae(torch.cat([eye, -eye]), "blocks.1.hook_resid_post", "tiny-llama",
                                   w_enc=torch.cat([eye, -eye]).T), "local-org/exact-saes", "layer_1", HUB_CACHE)
    caplog.clear()
    with caplog.at_level("WARNING", logger="peft_sails.selection"):
        exact = select_features(llama, tokenizer, sails_config(sae_release="local-org/exact-saes",
                                                                sae_ids={1: "layer_1"}), data[0], data[1],
                                show_progress=False)
    assert exact.sae_fit[1]["explained_variance"] == pytest.approx(1.0, abs=1e-5)
    assert "explains only" not in caplog.text


def test_passes_are_planned_from_memory(llama, tokenizer, data, planted_saes, monkeypatch):
    """saes_per_pass=None groups consecutive layers whose SAE encoders fit the memory budget; the features are the
    same whatever the grouping."""
    from peft_sails import selection
    from peft_sails.selection import plan_passes, selection_bytes

    assert plan_passes([5, 10, 15, 20], [4, 4, 4, 4], budget=8) == [[5, 10], [15, 20]]
    assert plan_passes([5, 10, 15], [4, 9, 4], budget=8) == [[5], [10], [15]]  # too big alone: a pass of its own
    assert plan_passes([5, 10], [4, 4], budget=1 << 40) == [[5, 10]]
    assert selection_bytes(3584, 131072) == 4 * 3584 * 131072 + 48 * 131072
    runs, real = {}, selection.accumulate_feature_stats
    for name, free in (("all", 1 << 40), ("one", 1)):
        monkeypatch.setattr(selection, "available_memory", lambda device, free=free: free)
        passes = []
        monkeypatch.setattr(selection, "accumulate_feature_stats",
                            lambda model, saes, *a, **k: passes.append(len(saes)) or real(model, saes, *a, **k))
        runs[name] = (select_features(llama, tokenizer, sails_config(), data[0], data[1], show_progress=False),
                      passes)
    assert runs["all"][1] == [2, 2] and runs["one"][1] == [1, 1, 1, 1]  # aligned + unaligned per pass
    assert runs["all"][0].features == runs["one"][0].features
