"""Cheap, deterministic filters that run before (and instead of) teacher-model judges.

Everything here is pure: the same input gives the same answer on every machine and every run (hashes
are blake2b, never Python's salted ``hash()``), so filter decisions can be cached by content.

- `normalize`, `shingles`, `jaccard`: the text model shared by the filters. Texts are compared as sets
  of word n-grams ("shingles") of their normalized form.
- `NearDuplicateIndex`: near-duplicate detection. Each text gets a MinHash signature (``num_perm``
  hash functions; the share of equal positions in two signatures estimates the Jaccard similarity of
  their shingle sets). Signatures are cut into bands of ``rows`` values; two texts that agree on any
  whole band become candidates, and candidates are verified with the exact Jaccard of their shingles,
  so there are no false positives, only (rare) misses. The band shape is chosen so that a pair at
  exactly the threshold is missed with probability below 1e-3; more similar pairs far less often.
  Exact duplicates (same normalized text) are looked up by digest and are always found.
- `length_ok`, `is_refusal`, `seed_leakage`: length bounds, refusal (labcycle/refusals.py, the phrase list
  the safety evaluation uses too) / assistant boilerplate, and
  verbatim copying from seed examples.
- `content_words`, `lexical_support`: how much of an answer's content (its words other than stop words,
  numbers included) appears in the source it should rest on; a judge-free grounding check.
- `find_pii`, `redact_pii` (with `luhn_ok`, `iban_ok`): personal data (emails, phone numbers, payment
  cards, US social security numbers, IBANs, IPv4 addresses) found by pattern plus checksum, and replaced
  by placeholders such as "[EMAIL]".
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence

from dataclasses import dataclass

import numpy as np

from labcycle.refusals import APOSTROPHES, REFUSAL_PATTERNS, refuses

__all__ = [
    "BOILERPLATE_PATTERNS",
    "DEFAULT_PII_KINDS",
    "PII_KINDS",
    "REFUSAL_PATTERNS",
    "STOP_WORDS",
    "NearDuplicateIndex",
    "PiiMatch",
    "choose_bands",
    "content_words",
    "find_pii",
    "iban_ok",
    "is_refusal",
    "jaccard",
    "length_ok",
    "lexical_support",
    "luhn_ok",
    "normalize",
    "redact_pii",
    "seed_leakage",
    "shingles",
]

# ---------------------------------------------------------------------------------------------------
# Text model


def _strip_edge_punctuation(word: str) -> str:
    if word[0].isalnum() and word[-1].isalnum():
        return word  # the common case
    start, end = 0, len(word)
    while start < end and unicodedata.category(word[start]).startswith("P"):
        start += 1
    while end > start and unicodedata.category(word[end - 1]).startswith("P"):
        end -= 1
    return word[start:end]


def normalize(text: str) -> str:
    """Casefolded text with whitespace collapsed to single spaces and punctuation stripped from the
    edges of each word ("Hello, World!" -> "hello world"; "don't" and "3.14" keep their inner marks).
    Words that are punctuation only disappear. Compatibility forms are unified first (NFKC)."""
    words = unicodedata.normalize("NFKC", text).casefold().split()
    out = [w for w in map(_strip_edge_punctuation, words) if w]
    return " ".join(out)


def _ngrams(words: Sequence[str], n: int) -> set[str]:
    return {" ".join(words[i : i + n]) for i in range(len(words) - n + 1)}


def shingles(text: str, n: int = 3) -> set[str]:
    """The word n-grams of the normalized text. A text with fewer than ``n`` words (but at least one)
    is a single shingle of all its words; an empty text has no shingles."""
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    words = normalize(text).split()
    if not words:
        return set()
    if len(words) < n:
        return {" ".join(words)}
    return _ngrams(words, n)


def jaccard(a: set[str], b: set[str]) -> float:
    """|a & b| / |a | b|; two empty sets are identical (1.0)."""
    if not a and not b:
        return 1.0
    inter = len(a & b)
    return inter / (len(a) + len(b) - inter)


# ---------------------------------------------------------------------------------------------------
# Near duplicates: MinHash + LSH banding, verified by exact Jaccard

_MASK64 = (1 << 64) - 1


def _h64(s: str) -> int:
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little")


def _digest(normalized: str) -> bytes:
    return hashlib.blake2b(normalized.encode("utf-8"), digest_size=16).digest()


def choose_bands(threshold: float, num_perm: int, max_miss: float = 1e-3) -> tuple[int, int]:
    """(bands, rows) for LSH over ``num_perm`` MinHash values: the most rows per band (fewest false
    candidates) such that a pair whose Jaccard equals ``threshold`` is missed with probability at most
    ``max_miss``, i.e. ``(1 - threshold**rows) ** bands <= max_miss``; one row per band when even that
    misses more often."""
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    if num_perm < 1:
        raise ValueError(f"num_perm must be at least 1, got {num_perm}")
    for rows in range(num_perm, 0, -1):
        bands = num_perm // rows
        if (1.0 - threshold**rows) ** bands <= max_miss:
            return bands, rows
    return num_perm, 1


class NearDuplicateIndex:
    """Near-duplicate detection with MinHash signatures and LSH banding (num_perm=64, bands tuned so that
    Jaccard >= threshold is found with high probability), verified by exact Jaccard of shingles."""

    def __init__(self, threshold: float = 0.8, ngram: int = 3, num_perm: int = 64, seed: int = 1):
        self.threshold = float(threshold)
        self.ngram = int(ngram)
        self.num_perm = int(num_perm)
        self.bands, self.rows = choose_bands(self.threshold, self.num_perm)
        if self.ngram < 1:
            raise ValueError(f"ngram must be at least 1, got {ngram}")
        # One 64-bit salt per hash function, derived from the seed with blake2b (stable everywhere).
        salts = [
            int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "little")
            for i in range(self.num_perm)
        ]
        self._salts = np.array(salts, dtype=np.uint64)
        self._keys: dict[str, tuple[bytes, set[str], list[bytes]]] = {}  # key -> (digest, shingles, band keys)
        self._order: dict[str, int] = {}  # key -> insertion number, for stable ties
        self._added = 0
        self._exact: dict[bytes, list[str]] = {}  # normalized-text digest -> keys, oldest first
        self._buckets: list[dict[bytes, list[str]]] = [{} for _ in range(self.bands)]
        self._memo: tuple[str, bytes, set[str], list[bytes]] | None = None  # find() then add() of one text

    def __len__(self) -> int:
        return len(self._keys)

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def _signature(self, shingle_set: Iterable[str]) -> np.ndarray:
        hashes = np.fromiter((_h64(s) for s in shingle_set), dtype=np.uint64)
        # Hash function i: the splitmix64 finalizer of (shingle hash XOR salt i), a strong 64-bit mixer,
        # so each function behaves as an independent random permutation for MinHash.
        with np.errstate(over="ignore"):
            x = hashes[:, None] ^ self._salts[None, :]
            x ^= x >> np.uint64(30)
            x *= np.uint64(0xBF58476D1CE4E5B9)
            x ^= x >> np.uint64(27)
            x *= np.uint64(0x94D049BB133111EB)
            x ^= x >> np.uint64(31)
        return x.min(axis=0)

    def _prepare(self, text: str) -> tuple[bytes, set[str], list[bytes]]:
        memo = self._memo
        if memo is not None and memo[0] == text:
            return memo[1], memo[2], memo[3]
        norm = normalize(text)
        digest = _digest(norm)
        words = norm.split()
        if not words:
            sh: set[str] = set()
        elif len(words) < self.ngram:
            sh = {norm}
        else:
            sh = _ngrams(words, self.ngram)
        band_keys: list[bytes] = []
        if sh:
            sig = self._signature(sh)
            r = self.rows
            band_keys = [sig[b * r : (b + 1) * r].tobytes() for b in range(self.bands)]
        self._memo = (text, digest, sh, band_keys)
        return digest, sh, band_keys

    def add(self, key: str, text: str) -> None:
        """Index ``text`` under ``key``; adding an existing key replaces its text."""
        if key in self._keys:
            self.remove(key)
        digest, sh, band_keys = self._prepare(text)
        self._keys[key] = (digest, sh, band_keys)
        self._order[key] = self._added
        self._added += 1
        self._exact.setdefault(digest, []).append(key)
        for bucket, bk in zip(self._buckets, band_keys):
            bucket.setdefault(bk, []).append(key)

    def remove(self, key: str) -> None:
        """Forget ``key``; a KeyError when it is not indexed."""
        digest, _, band_keys = self._keys.pop(key)
        del self._order[key]
        _discard(self._exact, digest, key)
        for bucket, bk in zip(self._buckets, band_keys):
            _discard(bucket, bk, key)

    def find(self, text: str) -> tuple[str, float] | None:
        """The most similar indexed key whose exact shingle Jaccard with ``text`` is at least the
        threshold, with that Jaccard; None when there is none. Ties go to the key added first."""
        digest, sh, band_keys = self._prepare(text)
        same = self._exact.get(digest)
        if same:
            return same[0], 1.0
        if not sh:
            return None
        candidates: set[str] = set()
        for bucket, bk in zip(self._buckets, band_keys):
            hit = bucket.get(bk)
            if hit:
                candidates.update(hit)
        best: tuple[str, float] | None = None
        for key in sorted(candidates, key=self._order.__getitem__):
            j = jaccard(sh, self._keys[key][1])
            if j >= self.threshold and (best is None or j > best[1]):
                best = (key, j)
        return best


def _discard(index: dict[bytes, list[str]], k: bytes, key: str) -> None:
    keys = index.get(k)
    if keys is None:
        return
    try:
        keys.remove(key)
    except ValueError:
        return
    if not keys:
        del index[k]


# ---------------------------------------------------------------------------------------------------
# Length, refusals, seed leakage


def length_ok(text: str, min_words: int = 0, max_words: int | None = None) -> bool:
    """Whether the text's whitespace-separated word count lies in [min_words, max_words]."""
    n = len(text.split())
    return n >= min_words and (max_words is None or n <= max_words)


# Refusals are labcycle.refusals' list, the one the safety evaluation uses; a sample with assistant
# boilerplate is dropped too, though it refuses nothing.
BOILERPLATE_PATTERNS: tuple[str, ...] = (
    r"\bas an? (?:AI|artificial intelligence)(?:\s+(?:language|text|chat))?\s+(?:model|assistant|system|chatbot)\b",
    r"\bas a (?:large )?language model\b",
    r"\bI(?:'m| am)\s+(?:just|only|merely)\s+an?\s+(?:AI|language model|computer program|virtual assistant)\b",
    r"\bI(?:'m| am)\s+an?\s+AI(?:\s+(?:language model|assistant|model))?\s*(?:,|and|so|developed|created|trained)\b",
    r"\bI\s+(?:don't|do not)\s+have\s+(?:access\s+to|the\s+ability\s+to|personal\s+(?:opinions|experiences|feelings|beliefs)|real-time|browsing|internet)",
    r"\b(?:as of|since)\s+my\s+(?:last\s+)?(?:knowledge\s+)?(?:cutoff|cut-off|training(?:\s+data)?(?:\s+cutoff)?|update)\b",
    r"\bmy\s+(?:knowledge|training)\s+(?:cutoff|cut-off)\b",
)
_BOILERPLATE_RE = re.compile("|".join(f"(?:{p})" for p in BOILERPLATE_PATTERNS), re.IGNORECASE | re.MULTILINE)


def is_refusal(text: str) -> bool:
    """Whether the text refuses (labcycle.refusals), or carries assistant boilerplate ("As an AI language
    model ..."). Curly apostrophes count as straight ones."""
    return refuses(text) or _BOILERPLATE_RE.search(text.translate(APOSTROPHES)) is not None


def seed_leakage(text: str, seeds: Sequence[str], ngram: int = 8) -> float:
    """The largest share (0..1) of the text's distinct word n-grams that occur verbatim in any one seed,
    compared on normalized words. A text shorter than ``ngram`` words uses n = its length, so a short
    text scores 1.0 only when it appears whole in a seed. An empty text scores 0.0."""
    if ngram < 1:
        raise ValueError(f"ngram must be at least 1, got {ngram}")
    words = normalize(text).split()
    if not words:
        return 0.0
    n = min(ngram, len(words))
    grams = _ngrams(words, n)
    best = 0.0
    for seed in seeds:
        seed_words = normalize(seed).split()
        if len(seed_words) < n:
            continue
        share = len(grams & _ngrams(seed_words, n)) / len(grams)
        if share > best:
            best = share
            if best >= 1.0:
                break
    return best


# ---------------------------------------------------------------------------------------------------
# Grounding without a judge: lexical support

# English function words: they carry no claim, so an answer is not "supported" by sharing them.
STOP_WORDS = frozenset("""
a about above across after again against all almost also although always am among an and another any
anyone anything are around as at be became because become becomes been before being below between both
but by can cannot could did do does doing done down during each either else enough etc even ever every
few for from further had has have having he her here hers herself him himself his how however i if in
into is it its itself just least less may maybe me might more most much must my myself neither never no
nor not now of off often on once one only onto or other others otherwise our ours ourselves out over own
per perhaps quite rather same several shall she should since so some something such than that the their
theirs them themselves then there therefore these they this those though through throughout thus to
together too toward towards under unless until up upon us very via was we well were what whatever when
whenever where whether which while who whom whose why will with within without would yet you your yours
yes yourself yourselves
aren't can't couldn't didn't doesn't don't hadn't hasn't haven't isn't let's shouldn't wasn't weren't
won't wouldn't i'm i've i'd i'll you're you've you'd you'll we're we've they're they've
""".split())

# A number (digits with inner separators: 1,000 / 3.14 / 2024-05) or a word (letters, inner apostrophes).
_TOKEN_RE = re.compile(r"\d+(?:[.,]\d+)*|[^\W\d_]+(?:'[^\W\d_]+)*")


def _word_form(word: str) -> str:
    """A crude shared form: no possessive, no plural ending ("risks" -> "risk", "policies" -> "policy")."""
    if word.endswith("'s"):
        word = word[:-2]
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 3 and word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def content_words(text: str) -> list[str]:
    """The text's content words in order: casefolded (after NFKC), curly apostrophes made straight, stop
    words and one-letter words removed, possessives and plural endings cut. Numbers are content words,
    with thousands separators dropped ("1,000" -> "1000")."""
    folded = unicodedata.normalize("NFKC", text).casefold().translate(APOSTROPHES)
    out = []
    for token in _TOKEN_RE.findall(folded):
        if token[0].isdigit():
            out.append(re.sub(r",(?=\d{3}(?!\d))", "", token))
        elif len(token) > 1 and token not in STOP_WORDS:
            word = _word_form(token)
            if word not in STOP_WORDS:
                out.append(word)
    return out


def lexical_support(answer: str, source: str) -> tuple[float, list[str]]:
    """(share, missing): the share (0..1) of the answer's distinct content words that also occur in the
    source, and the missing ones in the order the answer uses them. An answer without content words
    makes no claim to check: share 1.0."""
    words = list(dict.fromkeys(content_words(answer)))
    if not words:
        return 1.0, []
    known = set(content_words(source))
    missing = [w for w in words if w not in known]
    return 1.0 - len(missing) / len(words), missing


# ---------------------------------------------------------------------------------------------------
# Personal data: patterns, then checksums where the format has one


@dataclass(frozen=True)
class PiiMatch:
    kind: str  # one of PII_KINDS
    start: int
    end: int
    text: str


# kind -> the placeholder that replaces it. Order matters: earlier kinds win overlapping matches (an IBAN's
# digits are not also a card number, a card's digits are not also a phone number).
PII_KINDS: dict[str, str] = {
    "email": "[EMAIL]",
    "iban": "[IBAN]",
    "payment_card": "[CARD]",
    "us_ssn": "[SSN]",
    "phone": "[PHONE]",
    "ipv4": "[IP]",
}
# IPv4 addresses are off by default: technical documents are full of example and private addresses.
DEFAULT_PII_KINDS: tuple[str, ...] = ("email", "iban", "payment_card", "us_ssn", "phone")

_NOT_AFTER = r"(?![\w@]|[.-]\d)"  # a match ends where neither a word nor a longer number goes on
_PII_RE: dict[str, re.Pattern[str]] = {
    "email": re.compile(r"(?<![\w.%+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@"
                        r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"),
    # Two letters, two check digits, then 11-30 letters or digits, in groups of four or run together.
    "iban": re.compile(r"(?<![\w-])[A-Z]{2}\d{2}(?: ?[A-Z0-9]{4}){2,7}(?: ?[A-Z0-9]{1,3})?(?!\w)"),
    # 13-19 digits run together, or in the groups cards print: 4-4-4-4 (up to 19 digits) or 4-6-5.
    "payment_card": re.compile(r"(?<![\w.,-])(?:\d{13,19}|\d{4}([ -])\d{4}\1\d{4}\1\d{1,4}(?:\1\d{1,3})?"
                               r"|\d{4}([ -])\d{6}\2\d{4,5})" + _NOT_AFTER),
    # AAA-GG-SSSS, hyphens only (nine bare digits are too often something else); never area 000, 666 or 9xx,
    # group 00 or serial 0000.
    "us_ssn": re.compile(r"(?<![\w.,-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}" + _NOT_AFTER),
    "phone": re.compile(
        r"(?<![\w.,+-])(?:"
        r"\+\d{1,3}(?:[ .-]?(?:\(\d{1,4}\)|\d{1,5})){1,6}"  # international: + country code, then groups
        r"|\([2-9]\d\d\) ?\d{3}[ .-]\d{4}|[2-9]\d\d([.-])\d{3}\1\d{4}"  # North American: (555) 123-4567, 555.123.4567
        r"|0\d{1,4}[ .-]\d{3,4}[ .-]?\d{3,4}"  # national with a trunk 0: 020 7946 0958, 030 1234567
        r")" + _NOT_AFTER
    ),
    "ipv4": re.compile(r"(?<![\w.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\w]|\.\d)"),
}


def luhn_ok(digits: str) -> bool:
    """The Luhn (mod 10) check every payment card number passes; False for anything but digits."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """The ISO 13616 check of an IBAN (spaces ignored): 15-34 characters, the first four moved to the end,
    letters read as 10..35, and the number modulo 97 is 1."""
    s = iban.replace(" ", "").upper()
    if not (15 <= len(s) <= 34 and s[:2].isalpha() and s[2:4].isdigit() and s.isalnum() and s.isascii()):
        return False
    return int("".join(str(int(ch, 36)) for ch in s[4:] + s[:4])) % 97 == 1


def _digits(text: str) -> str:
    return "".join(ch for ch in text if ch.isdigit())


def _valid(kind: str, text: str) -> bool:
    if kind == "iban":
        return iban_ok(text)
    if kind == "payment_card":
        digits = _digits(text)
        # Cards are issued with a first digit of 2-6 (Mastercard, Visa, Amex, Discover, ...).
        return 13 <= len(digits) <= 19 and digits[0] in "23456" and luhn_ok(digits)
    if kind == "phone":
        return 8 <= len(_digits(text)) <= 15 if text.startswith("+") else True
    return True


def find_pii(text: str, kinds: Iterable[str] = DEFAULT_PII_KINDS) -> list[PiiMatch]:
    """The personal data in `text` of the given kinds (names of PII_KINDS), without overlaps, in order.
    Card numbers must pass the Luhn check and IBANs their mod-97 check, so a random 16-digit number is not a
    card; dates, version numbers and plain counts are not phone numbers."""
    wanted = set(kinds)
    unknown = wanted - set(PII_KINDS)
    if unknown:
        raise ValueError(f"unknown PII kinds {sorted(unknown)}; known: {list(PII_KINDS)}")
    found: list[PiiMatch] = []
    for kind in PII_KINDS:
        if kind not in wanted:
            continue
        for m in _PII_RE[kind].finditer(text):
            if _valid(kind, m.group()) and not any(m.start() < f.end and f.start < m.end() for f in found):
                found.append(PiiMatch(kind, m.start(), m.end(), m.group()))
    return sorted(found, key=lambda f: f.start)


def redact_pii(text: str, kinds: Iterable[str] = DEFAULT_PII_KINDS) -> tuple[str, list[PiiMatch]]:
    """`text` with each piece of personal data replaced by its kind's placeholder ("[EMAIL]", ...), and
    what was replaced."""
    found = find_pii(text, kinds)
    out, last = [], 0
    for f in found:
        out += [text[last : f.start], PII_KINDS[f.kind]]
        last = f.end
    out.append(text[last:])
    return "".join(out), found
