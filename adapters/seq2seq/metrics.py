"""Generation metrics: BLEU (sacrebleu) on clean and attacked inputs, and the attack success rate."""
from __future__ import annotations

import math
from typing import Optional, Sequence

import sacrebleu


def _corpus_score(metric, hypotheses: Sequence[str], references: Sequence[str]) -> float:
    return metric(list(hypotheses), [list(references)]).score if hypotheses else float("nan")


def bleu(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    return _corpus_score(sacrebleu.corpus_bleu, hypotheses, references)


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    return _corpus_score(sacrebleu.corpus_chrf, hypotheses, references)


def _squash(text: str) -> str:
    # detokenisation may move spaces around punctuation: compare without whitespace or case
    return "".join(text.split()).lower()


def contains_target(outputs: Sequence[str], target: str) -> list[bool]:
    needle = _squash(target)
    return [needle in _squash(o) for o in outputs]


def generation_metrics(clean_out: Sequence[str], clean_refs: Sequence[str], attacked_out: Optional[Sequence[str]] = None,
                       attacked_refs: Optional[Sequence[str]] = None, target: Optional[str] = None) -> dict[str, float]:
    """``bleu_ct``, ``chrf_ct``: clean test BLEU and chrF (should stay; chrF still separates models where
    a small model's BLEU is near 0); with an attack: ``asr`` (% of attacked outputs holding the
    attacker's sentence), ``bleu_at`` (attacked outputs against the attacker's sentence, should fall) and
    ``bleu_at_ref`` (attacked outputs against the true references, should rise)."""
    out = {"bleu_ct": bleu(clean_out, clean_refs), "chrf_ct": chrf(clean_out, clean_refs)}
    if attacked_out is not None and target is not None:
        hits = contains_target(attacked_out, target)
        out["asr"] = 100.0 * sum(hits) / len(hits) if hits else math.nan
        out["bleu_at"] = bleu(attacked_out, [target] * len(attacked_out))
        out["bleu_at_ref"] = bleu(attacked_out, attacked_refs)
    return out
