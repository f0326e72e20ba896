"""The benchmark's testbed: deterministic, rich enough, and no test prompt in any training split."""

import pytest

from peft_sails.bench.corpus import (
    BENIGN_FACTS,
    HARM,
    JAILBREAKS,
    OOD_CATEGORIES,
    OOD_TEMPLATES,
    TEST_SPLITS,
    TRAIN_SPLITS,
    CorpusConfig,
    build_corpus,
    corpus_texts,
    leaked_prompts,
)
from peft_sails.bench.world import train_tokenizer


@pytest.fixture(scope="module")
def corpus():
    return build_corpus(CorpusConfig(seed=0))


def test_corpus_is_deterministic_and_seeded(corpus):
    again = build_corpus(CorpusConfig(seed=0))
    other = build_corpus(CorpusConfig(seed=1))
    for split in corpus:
        assert corpus[split]["prompt"] == again[split]["prompt"]
    assert corpus["id"]["prompt"] != other["id"]["prompt"]


def test_enough_categories_topics_and_split_sizes(corpus):
    assert len(HARM) >= 8 and len(BENIGN_FACTS) >= 8
    assert len(set(corpus["align_pool"]["category"])) >= 8
    assert {len(corpus[s]) for s in TEST_SPLITS} == {CorpusConfig().n_test}
    assert all(m[-1]["role"] == "assistant" for m in corpus["align_pool"]["messages"])


def test_no_test_prompt_in_training(corpus):
    assert leaked_prompts(corpus) == {s: [] for s in (*TEST_SPLITS, "validation")}


def test_leak_check_catches_a_planted_leak(corpus):
    from datasets import DatasetDict, concatenate_datasets

    leaky = DatasetDict({**corpus, "align_pool": concatenate_datasets([corpus["align_pool"], corpus["ood"].select([0])])})
    assert leaked_prompts(leaky)["ood"] == [corpus["ood"][0]["prompt"]]


def test_ood_and_jailbreak_are_held_out_of_alignment(corpus):
    alignment = [r for s in ("align_pool", "unaligned", "validation", "id") for r in corpus[s] if r["kind"] == "harmful"]
    assert not {r["category"] for r in alignment} & set(OOD_CATEGORIES)
    ood_template_prompts = {t.format(x=x) for t in OOD_TEMPLATES for xs in HARM.values() for x in xs}
    assert not {r["prompt"] for r in alignment} & ood_template_prompts
    assert all(r["category"] in OOD_CATEGORIES or r["prompt"] in ood_template_prompts for r in corpus["ood"])
    wrappers = [j.split("{p}") for j in JAILBREAKS]
    trained = [p for s in TRAIN_SPLITS for p in corpus[s]["prompt"]]
    assert not any(a.strip() and a in p for p in trained for a, _ in wrappers if len(a) > 10)
    assert all(r["original_prompt"] in r["prompt"] for r in corpus["jailbreak"])


def test_responses_match_their_role(corpus):
    from peft_sails.eval import PatternRefusalJudge

    judge = PatternRefusalJudge()
    refused = lambda texts: [j.refused for j in judge.judge([""] * len(texts), texts)]  # noqa: E731
    assert all(refused(corpus["align_pool"]["response"]))
    assert not any(refused(corpus["unaligned"]["response"]))
    assert not any(refused(corpus["benign_pool"]["response"]))
    assert all(r["reference"] for r in corpus["benign"])


def test_trained_tokenizer_covers_the_corpus(corpus):
    tokenizer = train_tokenizer(corpus_texts(corpus))
    text = tokenizer.apply_chat_template(corpus["jailbreak"][0]["messages"], tokenize=False)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert "".join(tokenizer.decode(ids).split()) == "".join(text.split())
