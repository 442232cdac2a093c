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
- `length_ok`, `is_refusal`, `seed_leakage`: length bounds, refusal / assistant boilerplate, and
  verbatim copying from seed examples.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "REFUSAL_PATTERNS",
    "NearDuplicateIndex",
    "choose_bands",
    "is_refusal",
    "jaccard",
    "length_ok",
    "normalize",
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


_CANT = r"(?:can't|cannot|can not|am unable to|am not able to|won't|will not|must decline to|am not allowed to)"
_ACT = (
    r"(?:help(?!\s+but\b)|assist|provide|comply|fulfil|fulfill|answer that|answer this|answer your|respond to|"
    r"generate|create|write|share|engage|do that|do this|continue with)"
)

REFUSAL_PATTERNS: list[str] = [
    # Apologetic refusals: "I'm sorry, but I can't ...", "I apologize, but as an AI ...".
    rf"\b(?:I'm|I am|I'm truly|I am truly|I'm very|I'm so|I'm really)\s+sorry,?\s+(?:but\s+)?(?:I\s+{_CANT}|I\s+(?:don't|do not)\s+have|as an? (?:AI|language model)|that's not something|this (?:is not|isn't) something|your request|this request)",
    rf"\bI\s+apologi[sz]e,?\s+(?:but\s+)?(?:I\s+{_CANT}|I\s+(?:don't|do not)\s+have|as an? (?:AI|language model)|your request|this request)",
    rf"^\W*(?:sorry|unfortunately),?\s+(?:but\s+)?I\s+{_CANT}",
    # Direct refusals: "I cannot help with that", "I'm unable to provide ...", "I must decline".
    rf"\bI\s+{_CANT}\s+(?:\w+\s+){{0,2}}?{_ACT}\b",
    rf"\bI'm\s+(?:not able|unable|not allowed|not permitted)\s+to\s+(?:\w+\s+){{0,2}}?{_ACT}\b",
    r"\bI\s+(?:must|have to|need to|will have to)\s+(?:respectfully\s+)?(?:decline|refuse)\b",
    r"\b(?:against|violates?|outside(?: of)?)\s+my\s+(?:guidelines|programming|policies|policy|principles|capabilities)\b",
    r"\b(?:can't|cannot|unable to)\s+(?:fulfil|fulfill|comply with|assist with|help with)\s+(?:this|that|your)\s+request\b",
    # Assistant self-reference and capability boilerplate.
    r"\bas an? (?:AI|artificial intelligence)(?:\s+(?:language|text|chat))?\s+(?:model|assistant|system|chatbot)\b",
    r"\bas a (?:large )?language model\b",
    r"\bI(?:'m| am)\s+(?:just|only|merely)\s+an?\s+(?:AI|language model|computer program|virtual assistant)\b",
    r"\bI(?:'m| am)\s+an?\s+AI(?:\s+(?:language model|assistant|model))?\s*(?:,|and|so|developed|created|trained)\b",
    r"\bI\s+(?:don't|do not)\s+have\s+(?:access\s+to|the\s+ability\s+to|personal\s+(?:opinions|experiences|feelings|beliefs)|real-time|browsing|internet)",
    r"\b(?:as of|since)\s+my\s+(?:last\s+)?(?:knowledge\s+)?(?:cutoff|cut-off|training(?:\s+data)?(?:\s+cutoff)?|update)\b",
    r"\bmy\s+(?:knowledge|training)\s+(?:cutoff|cut-off)\b",
]

_REFUSAL_RE = re.compile("|".join(f"(?:{p})" for p in REFUSAL_PATTERNS), re.IGNORECASE | re.MULTILINE)
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'"})


def is_refusal(text: str) -> bool:
    """Whether the text refuses, or carries assistant boilerplate ("As an AI language model ...").
    Curly apostrophes count as straight ones."""
    return _REFUSAL_RE.search(text.translate(_APOSTROPHES)) is not None


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
