"""Judge-free reference metrics and the means the report is made of.

token_f1 is SQuAD's: both texts are normalised (lower case, punctuation and the articles a/an/the
removed, whitespace collapsed), then F1 of the bags of tokens. rouge_l is ROUGE-L's F-measure: the
longest common subsequence of the two token lists, as precision over the answer and recall over the
reference (beta 1, as rouge-score reports `fmeasure`); its tokens are lower-cased runs of letters and
digits, with articles kept, as ROUGE tokenises. Both are 0..1 and never raise.
"""

from __future__ import annotations

import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = set(string.punctuation)
_WORD = re.compile(r"[^\W_]+")  # letters and digits in any script; punctuation and "_" split words
# LCS is quadratic; answers are capped by max_tokens anyway, this only bounds a pathological reference.
MAX_LCS_TOKENS = 2000


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in _PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def token_f1(prediction: str, reference: str) -> float:
    pred, gold = normalize_answer(prediction or "").split(), normalize_answer(reference or "").split()
    if not pred or not gold:
        # SQuAD: an empty side scores 1 only when both are empty.
        return float(pred == gold)
    same = sum((Counter(pred) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(pred), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def rouge_tokens(text: str) -> list[str]:
    return _WORD.findall((text or "").lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence (dynamic programming over two rows)."""
    if len(a) < len(b):
        a, b = b, a
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l(prediction: str, reference: str) -> float:
    pred, ref = rouge_tokens(prediction)[:MAX_LCS_TOKENS], rouge_tokens(reference)[:MAX_LCS_TOKENS]
    if not pred or not ref:
        return 0.0  # as rouge-score: nothing to match
    lcs = lcs_length(pred, ref)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(pred), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


def mean(values: Iterable[float | None]) -> float | None:
    """The mean of the values that are not None; None when there are none."""
    kept = [float(v) for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


def rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


__all__ = ["lcs_length", "mean", "normalize_answer", "rouge_l", "rouge_tokens", "rounded", "token_f1"]
