"""Tests for labcycle.tasks.generate.filters: text model, near duplicates, length, refusals, seed leakage,
lexical support and personal data."""

from __future__ import annotations

import random
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labcycle.tasks.generate.filters import (
    DEFAULT_PII_KINDS,
    PII_KINDS,
    REFUSAL_PATTERNS,
    NearDuplicateIndex,
    choose_bands,
    content_words,
    find_pii,
    iban_ok,
    is_refusal,
    jaccard,
    length_ok,
    lexical_support,
    luhn_ok,
    normalize,
    redact_pii,
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


# --- lexical support (judge-free grounding) -------------------------------------------------------

CHUNK = (
    "Indirect prompt injection hides instructions in content that a model reads on a user's behalf, such as "
    "web pages and emails. In a 2023 study, 31 of 36 tested applications were vulnerable. Filtering inputs "
    "reduces the risk but does not remove it."
)


def test_content_words():
    assert content_words("The model's risks, and the policies of 1,000 companies in 2023!") == [
        "model", "risk", "policy", "1000", "company", "2023"]
    assert content_words("It is what it is; don\u2019t you think so?") == ["think"]  # stop words and contractions go
    assert content_words("Version 3.14 costs $5 (x)") == ["version", "3.14", "cost", "5"]  # one-letter words go
    assert content_words("Analysis of the bus and glass") == ["analysis", "bus", "glass"]  # -is, -us, -ss keep their s
    assert content_words("") == []


@pytest.mark.parametrize("answer, share, missing", [
    # Supported: every content word is in the chunk, in other inflections and order.
    ("Indirect prompt injection hides instructions in web pages or emails that a model reads.", 1.0, []),
    ("In 2023, 31 of the 36 applications tested were vulnerable.", 1.0, []),
    # Partly supported: the invented figure and claim are what is missing.
    ("Filtering inputs removes the risk entirely in 90 percent of applications.", 0.625, ["entirely", "90", "percent"]),
    # Unsupported: nothing of it is in the chunk.
    ("Quantum annealing speeds up protein folding.", 0.0, ["quantum", "annealing", "speed", "protein", "folding"]),
    # A different number is not support: numbers count.
    ("32 of 36 applications were vulnerable.", 0.75, ["32"]),
    # No content words: no claim to check.
    ("Yes, it is.", 1.0, []),
])
def test_lexical_support(answer, share, missing):
    got, gone = lexical_support(answer, CHUNK)
    assert got == pytest.approx(share, abs=0.01) and gone == missing


def test_lexical_support_counts_distinct_words_and_needs_a_source():
    assert lexical_support("risk risk risk novel", "a risk") == (0.5, ["novel"])  # repetition does not buy support
    assert lexical_support("any claim at all", "") == (0.0, ["claim"])


# --- personal data --------------------------------------------------------------------------------


def test_luhn_and_iban_checksums():
    assert luhn_ok("4111111111111111") and luhn_ok("378282246310005") and luhn_ok("0")
    assert not luhn_ok("4111111111111112") and not luhn_ok("4111 1111") and not luhn_ok("")
    assert iban_ok("GB82 WEST 1234 5698 7654 32") and iban_ok("DE89370400440532013000") and iban_ok("gb82west12345698765432")
    assert not iban_ok("GB82 WEST 1234 5698 7654 33")  # one digit off
    assert not iban_ok("GB82 WEST 1234") and not iban_ok("1282 WEST 1234 5698 7654 32")


def _found(text: str, kinds=tuple(PII_KINDS)) -> list[tuple[str, str]]:
    return [(m.kind, m.text) for m in find_pii(text, kinds)]


@pytest.mark.parametrize("text, found", [
    ("Write to jane.doe+news@example.co.uk today.", [("email", "jane.doe+news@example.co.uk")]),
    ("Reach me at (202) 555-0147 or 202.555.0147.", [("phone", "(202) 555-0147"), ("phone", "202.555.0147")]),
    ("Our office: +44 20 7946 0958, or 020 7946 0958 from the UK.", [("phone", "+44 20 7946 0958"), ("phone", "020 7946 0958")]),
    ("Paid with 4111 1111 1111 1111 and 5555-5555-5555-4444.", [("payment_card", "4111 1111 1111 1111"),
                                                                ("payment_card", "5555-5555-5555-4444")]),
    ("Amex 3782 822463 10005 on file", [("payment_card", "3782 822463 10005")]),
    ("SSN 078-05-1120.", [("us_ssn", "078-05-1120")]),
    ("IBAN DE89 3704 0044 0532 0130 00 please", [("iban", "DE89 3704 0044 0532 0130 00")]),
    ("Server at 192.168.10.254.", [("ipv4", "192.168.10.254")]),
])
def test_find_pii(text, found):
    assert _found(text) == found


@pytest.mark.parametrize("text", [
    "4111 1111 1111 1112",  # 16 digits failing Luhn: not a card
    "1234567890123456",  # passes nothing a card must
    "On 2024-01-15, 15/01/2024 and 12.05.2023 the team met.",  # dates are not phone numbers
    "Between 10:30-11:45 and in 1990-2000.",  # times and year ranges
    "Batch sizes 256 512 1024 and 2048.",  # numbers in a row
    "123-456-7890",  # no North American area code starts with 1
    "Version 1.2.3 and pi 3.14159265358979.",  # versions and decimals
    "ISBN 978-0-13-468599-1",
    "000-12-3456 and 123-00-4567",  # never-issued social security numbers
    "GB82 WEST 1234 5698 7654 33",  # an IBAN with a wrong check
    "user@localhost and @handle",  # no domain, no user
    "256.1.1.1 and 1.2.3.4.5",  # not IPv4 addresses
    "It costs 12,345,678 euros.",
])
def test_near_misses_are_not_pii(text):
    assert _found(text) == []


def test_overlaps_go_to_the_first_kind_and_redaction_replaces_in_place():
    # An IBAN's digits could pass for a card number; the IBAN wins and the digits are not counted twice.
    assert [m.kind for m in find_pii("DE89 3704 0044 0532 0130 00")] == ["iban"]
    text, found = redact_pii("Mail a@b.io, card 4111111111111111, phone +1 202 555 0147, IP 10.0.0.1.")
    assert text == "Mail [EMAIL], card [CARD], phone [PHONE], IP 10.0.0.1."  # IPv4 is not a default kind
    assert [m.kind for m in found] == ["email", "payment_card", "phone"]
    assert "ipv4" not in DEFAULT_PII_KINDS and set(DEFAULT_PII_KINDS) < set(PII_KINDS)
    assert redact_pii("IP 10.0.0.1", ["ipv4"]) == ("IP [IP]", find_pii("IP 10.0.0.1", ["ipv4"]))
    assert redact_pii("nothing personal here") == ("nothing personal here", [])
    with pytest.raises(ValueError, match="unknown PII kinds"):
        find_pii("x", ["passport"])


@given(st.one_of(st.text(max_size=200), st.text(alphabet="0123456789 -.+()@abcDEGB", max_size=60)))
@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
def test_redaction_leaves_no_match_and_never_raises(text):
    redacted, found = redact_pii(text, PII_KINDS)
    assert find_pii(redacted, PII_KINDS) == []
    assert all(text[m.start:m.end] == m.text for m in found)
    assert all(a.end <= b.start for a, b in zip(found, found[1:]))  # in order, no overlaps
    share, missing = lexical_support(text, text)
    assert share == 1.0 and missing == []
