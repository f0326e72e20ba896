"""The benchmark's testbed: deterministic, rich enough, and no test prompt in any training split (both presets)."""

import hashlib
import json

import pytest

from peft_sails.bench.corpus import (
    PRESETS,
    TEST_SPLITS,
    TRAIN_SPLITS,
    CorpusConfig,
    build_corpus,
    corpus_texts,
    leaked_prompts,
    preset_tables,
)
from peft_sails.bench.world import train_tokenizer

# sha256 of every row of the default corpus (seed 0), computed before presets existed: it must never change
DEFAULT_CORPUS_SHA256 = "02c8bf39b94286ecfcb2f1ba3fbf5dad6747d07982439b02079e71326709aff2"


@pytest.fixture(scope="module", params=PRESETS)
def preset(request):
    return request.param


@pytest.fixture(scope="module")
def corpus(preset):
    return build_corpus(CorpusConfig(seed=0, preset=preset))


def test_default_corpus_is_unchanged():
    corpus = build_corpus(CorpusConfig(seed=0))
    rows = json.dumps({k: v.to_list() for k, v in corpus.items()}, sort_keys=True)
    assert hashlib.sha256(rows.encode()).hexdigest() == DEFAULT_CORPUS_SHA256
    assert build_corpus(CorpusConfig(seed=0, preset="default"))["id"]["prompt"] == corpus["id"]["prompt"]
    with pytest.raises(ValueError, match="preset"):
        build_corpus(CorpusConfig(preset="nope"))


def test_corpus_is_deterministic_and_seeded(corpus, preset):
    again = build_corpus(CorpusConfig(seed=0, preset=preset))
    other = build_corpus(CorpusConfig(seed=1, preset=preset))
    for split in corpus:
        assert corpus[split]["prompt"] == again[split]["prompt"]
        assert corpus[split]["response"] == again[split]["response"]
    assert corpus["id"]["prompt"] != other["id"]["prompt"]


def test_enough_categories_topics_and_split_sizes(corpus, preset):
    tables = preset_tables(preset)
    assert len(tables.harm) >= 8 and len(tables.benign_facts) >= 8
    assert len(set(corpus["align_pool"]["category"])) >= 8
    assert {len(corpus[s]) for s in TEST_SPLITS} == {CorpusConfig().n_test}
    assert all(m[-1]["role"] == "assistant" for m in corpus["align_pool"]["messages"])
    assert max(len(p.split()) for s in corpus.values() for p in s["prompt"]) <= 40  # 128 positions for a chat


def test_no_test_prompt_in_training(corpus):
    assert leaked_prompts(corpus) == {s: [] for s in (*TEST_SPLITS, "validation")}


def test_leak_check_catches_a_planted_leak(corpus):
    from datasets import DatasetDict, concatenate_datasets

    leaky = DatasetDict({**corpus, "align_pool": concatenate_datasets([corpus["align_pool"], corpus["ood"].select([0])])})
    assert leaked_prompts(leaky)["ood"] == [corpus["ood"][0]["prompt"]]


def test_ood_and_jailbreak_are_held_out_of_alignment(corpus, preset):
    tables = preset_tables(preset)
    alignment = [r for s in ("align_pool", "unaligned", "validation", "id") for r in corpus[s] if r["kind"] == "harmful"]
    assert not {r["category"] for r in alignment} & set(tables.ood_categories)
    ood_template_prompts = {t.format(x=x) for t in tables.ood_templates for xs in tables.harm.values() for x in xs}
    assert not {r["prompt"] for r in alignment} & ood_template_prompts
    assert all(r["category"] in tables.ood_categories or r["prompt"] in ood_template_prompts for r in corpus["ood"])
    wrappers = [j.split("{p}") for j in tables.jailbreaks]
    trained = [p for s in TRAIN_SPLITS for p in corpus[s]["prompt"]]
    assert not any(a.strip() and a in p for p in trained for a, _ in wrappers if len(a) > 10)
    assert all(r["original_prompt"] in r["prompt"] for r in corpus["jailbreak"])


def test_responses_match_their_role(corpus, preset):
    from peft_sails.eval import PatternRefusalJudge

    judge = PatternRefusalJudge()
    refused = lambda texts: [j.refused for j in judge.judge([""] * len(texts), texts)]  # noqa: E731
    assert all(refused(corpus["align_pool"]["response"]))
    assert all(refused(preset_tables(preset).refusals))
    assert not any(refused(corpus["unaligned"]["response"]))
    assert not any(refused(corpus["benign_pool"]["response"]))
    assert not any(refused(corpus["benign"]["reference"]))
    assert all(r["reference"] for r in corpus["benign"])


def test_trained_tokenizer_covers_the_corpus(corpus):
    tokenizer = train_tokenizer(corpus_texts(corpus))
    text = tokenizer.apply_chat_template(corpus["jailbreak"][0]["messages"], tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert "".join(tokenizer.decode(ids).split()) == "".join(text.split())


# the hard preset: only the combination of a verb and its object decides whether a request is harmful

FUNCTION_WORDS = set("a an the my her his their of to in on at for from with into down up out over until".split())


def test_hard_preset_shares_verbs_between_harmful_and_benign_requests():
    from peft_sails.bench.corpus_hard import BENIGN_ACTIONS, HARD_HARM

    tables = preset_tables("hard")
    assert len(tables.harm) >= 14 and len(tables.templates) >= 20 and len(tables.ood_templates) >= 3
    harmful_verbs = {v for actions in HARD_HARM.values() for v, _ in actions}
    benign_verbs = {v for v, _ in BENIGN_ACTIONS}
    assert harmful_verbs == benign_verbs  # a verb alone predicts nothing
    # the held-out categories are new in wording: no verb or content word of theirs is in a training harmful request
    train_words = {w for c, actions in HARD_HARM.items() if c not in tables.ood_categories
                   for v, o in actions for w in f"{v} {o}".split()}
    ood_words = {w for c in tables.ood_categories for v, o in HARD_HARM[c] for w in f"{v} {o}".split()}
    assert not (ood_words & train_words) - FUNCTION_WORDS


def test_hard_corpus_tests_contrastive_benign_requests_and_knows_more_words():
    from peft_sails.bench.corpus_hard import BENIGN_ACTIONS, HARD_HARM

    tables = preset_tables("hard")
    default, hard = build_corpus(CorpusConfig()), build_corpus(CorpusConfig(preset="hard"))
    words = lambda c: {w for t in corpus_texts(c) for w in t.split()}  # noqa: E731
    assert len(words(hard)) >= len(words(default)) + 300
    howto = [r for r in hard["benign"] if r["category"] == "howto"]
    assert len(howto) >= len(hard["benign"]) // 2
    assert all(r["prompt"] in tables.howto_test_prompts for r in howto)  # phrasings alignment never shows
    assert not set(hard["benign_pool"]["prompt"]) & tables.howto_test_prompts
    assert {r["reference"] for r in howto} <= set(BENIGN_ACTIONS.values())
    # the base model knows every benign answer and has seen every held-out harmful request's wording
    assert set(BENIGN_ACTIONS.values()) <= set(hard["pretrain"]["response"])
    pretrain_text = " ".join(hard["pretrain"]["prompt"])
    assert all(f"{v} {o}" in pretrain_text for c in tables.ood_categories for v, o in HARD_HARM[c])
    # compliance names the request, so that a model has to read the object to answer
    for r in hard["unaligned"]:
        assert any(x in r["prompt"] and x in r["response"] for x in tables.harm[r["category"]])
