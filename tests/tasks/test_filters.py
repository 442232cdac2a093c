"""Tests for labcycle.tasks.generate.filters: text model, near duplicates, length, refusals, seed leakage."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labcycle.tasks.generate.filters import (
    REFUSAL_PATTERNS,
    NearDuplicateIndex,
    choose_bands,
    is_refusal,
    jaccard,
    length_ok,
    normalize,
    seed_leakage,
    shingles,
)

SENTENCE = (
    "Prompt injection lets an attacker hide instructions inside a web page, an email or a shared document "
    "that the model reads later on behalf of a legitimate user"
)


def _random_text(rng: random.Random, words: int, vocab_size: int = 5000) -> str:
    return " ".join(f"w{rng.randrange(vocab_size)}" for _ in range(words))


# --- text model ----------------------------------------------------------------------------------


def test_normalize():
    assert normalize("  Hello,\n\tWorld!  ") == "hello world"
    assert normalize('"Don\'t" stop — now... 3.14%') == "don't stop now 3.14"
    assert normalize("STRASSE straße") == "strasse strasse"
    assert normalize("   ...  !! ") == ""
    assert normalize("ﬁne") == "fine"  # NFKC ligature
    assert normalize("(C++) 50% $5") == "c++ 50 $5"  # punctuation, not symbols, is stripped


def test_shingles():
    assert shingles("The cat sat on the mat.") == {"the cat sat", "cat sat on", "sat on the", "on the mat"}
    assert shingles("Hello, world!") == {"hello world"}  # fewer words than n
    assert shingles("a b c d", n=1) == {"a", "b", "c", "d"}
    assert shingles("  ") == set()
    with pytest.raises(ValueError):
        shingles("x", n=0)


def test_jaccard():
    assert jaccard({"a", "b"}, {"b", "c"}) == pytest.approx(1 / 3)
    assert jaccard({"a"}, {"a"}) == 1.0
    assert jaccard(set(), {"a"}) == 0.0
    assert jaccard(set(), set()) == 1.0


# --- near duplicates -----------------------------------------------------------------------------


def test_exact_duplicates_always_found():
    idx = NearDuplicateIndex(threshold=0.8)
    idx.add("a", SENTENCE)
    idx.add("short", "Yes.")
    idx.add("empty", "   ")
    assert idx.find(SENTENCE.upper() + "!!") == ("a", 1.0)  # same normalized text
    assert idx.find("yes") == ("short", 1.0)
    assert idx.find("") == ("empty", 1.0)
    assert idx.find("No.") is None
    assert len(idx) == 3


def test_near_duplicate_one_word_changed():
    idx = NearDuplicateIndex(threshold=0.7)
    idx.add("orig", SENTENCE)
    changed = SENTENCE.replace("attacker", "adversary")
    hit = idx.find(changed)
    assert hit is not None and hit[0] == "orig"
    assert hit[1] == pytest.approx(jaccard(shingles(SENTENCE), shingles(changed)))
    assert hit[1] >= 0.7


def test_unrelated_texts_not_flagged():
    idx = NearDuplicateIndex(threshold=0.7)
    idx.add("orig", SENTENCE)
    idx.add("other", "Red-teaming exercises probe a system for failures before it is released to users")
    assert idx.find("Carbon emissions from training large models depend on the energy mix of the data centre") is None
    assert idx.find("Prompt injection is an attack on language models") is None  # related topic, different text


def test_most_similar_wins_and_readd_replaces():
    words = SENTENCE.split()
    one = " ".join(words[:-1] + ["soon"])
    two = " ".join(words[:5] + ["obscure"] + words[6:-1] + ["soon"])
    idx = NearDuplicateIndex(threshold=0.5)
    idx.add("two", two)
    idx.add("one", one)
    key, j = idx.find(SENTENCE)
    assert key == "one" and j == pytest.approx(jaccard(shingles(one), shingles(SENTENCE)))
    idx.add("one", "something else entirely, nothing alike at all")
    assert idx.find(SENTENCE)[0] == "two"
    idx.remove("two")
    assert idx.find(SENTENCE) is None and len(idx) == 1


def test_deterministic_across_instances():
    a, b = NearDuplicateIndex(seed=7), NearDuplicateIndex(seed=7)
    assert a._signature(shingles(SENTENCE)).tolist() == b._signature(shingles(SENTENCE)).tolist()


@pytest.mark.parametrize("threshold", [0.3, 0.5, 0.7, 0.8, 0.9])
def test_band_choice_recall_at_threshold(threshold):
    bands, rows = choose_bands(threshold, 64)
    assert bands * rows <= 64
    assert (1 - threshold**rows) ** bands <= 1e-3


@st.composite
def near_copies(draw: st.DrawFn) -> tuple[str, str, float]:
    n = draw(st.integers(min_value=8, max_value=120))
    seed = draw(st.integers(min_value=0, max_value=2**32))
    rng = random.Random(seed)
    words = _random_text(rng, n, vocab_size=20000).split()
    share = draw(st.sampled_from([0.0, 0.02, 0.05, 0.1, 0.15, 0.2]))
    changed = list(words)
    for i in rng.sample(range(n), k=round(share * n)):
        changed[i] = f"x{i}{changed[i]}"
    return " ".join(words), " ".join(changed), jaccard(shingles(" ".join(words)), shingles(" ".join(changed)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(near_copies(), st.sampled_from([0.5, 0.6, 0.7, 0.8]), st.integers(min_value=0, max_value=1000))
def test_minhash_recall(case, threshold, index_seed):
    original, copy, j = case
    if j < threshold + 0.1:  # only copies clearly above the threshold must be found (no misses allowed)
        threshold = round(j - 0.1, 2)
        if threshold < 0.3:
            return
    idx = NearDuplicateIndex(threshold=threshold, seed=index_seed)
    rng = random.Random(index_seed)
    for i in range(20):
        idx.add(f"noise{i}", _random_text(rng, 40))
    idx.add("original", original)
    hit = idx.find(copy)
    assert hit is not None, (j, threshold)
    assert hit[0] == "original" and hit[1] == pytest.approx(j)


def test_performance_10k_adds_and_finds():
    rng = random.Random(0)
    texts = [_random_text(rng, 50) for _ in range(10_000)]
    texts[5000:5100] = texts[:100]  # some exact duplicates
    idx = NearDuplicateIndex(threshold=0.8)
    start = time.perf_counter()
    dupes = 0
    for i, text in enumerate(texts):
        if idx.find(text) is not None:
            dupes += 1
        idx.add(str(i), text)
    elapsed = time.perf_counter() - start
    assert dupes == 100
    assert len(idx) == 10_000
    assert elapsed < 5.0, f"{elapsed:.2f}s"


# --- length --------------------------------------------------------------------------------------


def test_length_ok():
    assert length_ok("one two three", min_words=3, max_words=3)
    assert not length_ok("one two", min_words=3)
    assert not length_ok("one two three four", max_words=3)
    assert length_ok("")
    assert not length_ok("  ", min_words=1)
    assert length_ok("a\nb\tc", min_words=3)


# --- refusals ------------------------------------------------------------------------------------

REFUSALS = [
    "I'm sorry, but I can't help with that request.",
    "I’m sorry, but I cannot provide legal advice.",  # curly apostrophe
    "I am sorry, but as an AI I do not have opinions.",
    "As an AI language model, I do not have personal experiences.",
    "As an AI assistant, I can only offer general guidance.",
    "I cannot assist with creating malware.",
    "I can't help with that.",
    "I'm unable to provide that information.",
    "I don't have access to your company's incident database.",
    "I do not have the ability to browse the internet.",
    "Unfortunately, I cannot answer questions about specific people.",
    "I apologize, but I am unable to complete this task.",
    "I must respectfully decline this request.",
    "That request goes against my guidelines.",
    "I'm just an AI, so I can't make that decision for you.",
    "As of my last knowledge update in 2023, the regulation was still in draft.",
    "Sure. Here is the summary.\n\nSorry, I can't continue with this.",
]

NORMAL = [
    "The sorry state of security in many IoT devices makes them easy targets.",
    "I'm sorry to hear that the chatbot gave your customers the wrong return policy; here is a summary.",
    "Dear team, I'm sorry, but the shipment of the new servers will arrive a week late.",
    "Sorry for the delay: the risk register is attached.",
    "I can't help but notice that the policy does not name an owner.",
    "A model cannot provide guarantees about factual accuracy, so outputs must be reviewed.",
    "Hallucinations are outputs that are fluent but unsupported by any source.",
    "The assistant was deployed as an internal tool for the support team.",
    "Employees who don't have access to the approved tools should ask Information Security.",
    "| Risk | Owner | Action |\n| --- | --- | --- |\n| Prompt injection | Jun Park | Require confirmation |",
    "Refusal rates of AI language models differ between vendors.",
    "She works as an AI researcher at a university lab.",
]


def test_refusal_patterns_compile():
    import re

    assert len(REFUSAL_PATTERNS) >= 5
    for p in REFUSAL_PATTERNS:
        re.compile(p, re.IGNORECASE)


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_detected(text):
    assert is_refusal(text)
    assert is_refusal(text.upper())  # case-insensitive


@pytest.mark.parametrize("text", NORMAL)
def test_normal_answers_pass(text):
    assert not is_refusal(text)


# --- seed leakage --------------------------------------------------------------------------------

SEED = (
    "A hallucination is an output that is fluent and confident but factually wrong or unsupported by any "
    "source. Language models generate the most plausible continuation of a text, not a verified statement, "
    "so they can invent citations, misstate dates, attribute quotes to the wrong person, or describe "
    "software functions that do not exist."
)


def test_seed_leakage_verbatim_and_unrelated():
    other = "Prompt injection hides instructions in content that the model reads on behalf of a user."
    assert seed_leakage(SEED, [other, SEED]) == 1.0
    assert seed_leakage(SEED.upper().replace(".", "!"), [SEED]) == 1.0  # normalized comparison
    assert seed_leakage(other, [SEED]) == 0.0
    assert seed_leakage("", [SEED]) == 0.0
    assert seed_leakage(SEED, []) == 0.0


def test_seed_leakage_half_copied():
    rng = random.Random(3)
    seed_words = _random_text(rng, 200).split()
    fresh = [f"new{i}" for i in range(100)]
    text = " ".join(seed_words[50:100] + fresh[:50])  # 50 copied words + 50 new ones
    assert seed_leakage(text, [" ".join(seed_words)]) == pytest.approx(0.5, abs=0.1)
    longer = " ".join(seed_words[:100] + fresh)
    assert seed_leakage(longer, ["unrelated text " * 20, " ".join(seed_words)]) == pytest.approx(0.5, abs=0.05)


def test_seed_leakage_short_text_uses_smaller_n():
    assert seed_leakage("fluent and confident", [SEED]) == 1.0
    assert seed_leakage("confident and fluent", [SEED]) == 0.0
    assert 0.0 < seed_leakage("The output is fluent and confident but wrong", [SEED], ngram=3) < 1.0
