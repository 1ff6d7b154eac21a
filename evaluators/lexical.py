"""The default CPU groundedness backend: lexical support features per claim, scored by a small
logistic model.

Everything is fitted once per batch: one TF-IDF vocabulary (word 1-2 grams) over the batch's
context sentences and claims; similarities are sparse row-wise products between each claim and
the sentences of its own context. Character n-gram TF-IDF was tried and dropped: its fitted
weight was ~0 under cross-validation (-0.06) and it cut throughput by more than half; accents, plurals and number
spellings are normalised per token instead. Features are semantic, not data-set artefacts (no
answer length, no "copied verbatim" signal): does the claim's new content (names, numbers,
other words) occur in the context, how close is the best context sentence, and does the claim
negate or contrast where the context does not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.preprocessing import normalize

from evaluators.claims import CONTRAST_CUES, NEGATIONS, STOPWORDS, Claim, norm, split_sentences, words

FEATURES = [
    "key_coverage",  # IDF-weighted share of the claim's new names and numbers found in the context
    "word_coverage",  # same for its other new content words (paraphrase-prone, so kept apart)
    "token_coverage",  # share of all the claim's words, function words too, found in the context
    "missing_number",  # 1 if a new number or date in the claim is absent from the context
    "missing_name",  # 1 if a new name in the claim is absent from the context
    "word_sim",  # best cosine (word 1-2 gram TF-IDF) claim vs one context sentence (or window)
    "negation_mismatch",  # claim negates and its best sentence does not, or the reverse
    "contrast_cue",  # claim corrects/contrasts ("actually", "instead", "not X")
    "local_coverage",  # share of new content words found in the best-matching sentence/window
    "nothing_new",  # 1 if the claim adds no content word beyond the question it answers
]

# Logistic weights over FEATURES, fitted on the 2,000 HaluEval QA dev rows with each weight's
# sign fixed by the feature's meaning (bench/groundedness_quality.py --refit prints them; its
# 5-fold grouped cross-validation gives the out-of-sample AUROC quoted in docs/benchmarks.md).
WEIGHTS = np.array([2.511, 5.742, 2.150, -1.910, -2.633, 0.387, -0.169, -1.650, 0.477, 0.000])
BIAS = -9.493
assert len(WEIGHTS) == len(FEATURES)
# Claim supported when its support probability reaches this: the mean of the F1-best thresholds
# of the five cross-validation folds.
CLAIM_THRESHOLD = 0.715


@dataclass
class ClaimEvidence:
    features: np.ndarray  # (n_claims, len(FEATURES))
    best_sentence: list[str]
    missing: list[list[str]]  # new content words / entities of the claim not found in the context


def _is_key_term(token: str, position: int, context_names: set[str]) -> bool:
    """Names and numbers: what a claim must not get wrong. A capitalised first word is only a
    capital letter, so it counts as a name only when the context writes it capitalised
    mid-sentence too ("Delhi" yes, "Singing" no)."""
    if token[:1].isdigit():
        return True
    return token[:1].isupper() and (position > 0 or token.lower() in context_names)


def _number_forms(token: str) -> set[str]:
    t = re.sub(r"(?<=\d)(st|nd|rd|th|s)$", "", token.lower()).replace(",", "")
    return {t, t.lstrip("0") or "0"}


def _stem(t: str) -> str:
    return t[:6] if len(t) >= 7 else t


def claim_evidence(claims: list[Claim], contexts: list[str], claim_doc: list[int]) -> ClaimEvidence:
    """Features for claims; claim_doc[i] is the index in `contexts` of claim i's context."""
    n = len(claims)
    if n == 0:
        return ClaimEvidence(np.zeros((0, len(FEATURES))), [], [])
    # Context sentences, plus windows of two adjacent sentences (claims often fuse two facts).
    sent_texts: list[str] = []  # evidence units: single sentences and two-sentence windows
    sent_doc: list[int] = []
    single_texts: list[str] = []
    unit_rows: list[tuple[int, ...]] = []  # the single sentences each unit is made of
    ctx_tokens: list[set[str]] = []
    ctx_stems: list[set[str]] = []
    ctx_numbers: list[set[str]] = []
    ctx_names: list[set[str]] = []
    for d, ctx in enumerate(contexts):
        sents = split_sentences(ctx) or [ctx]
        names: set[str] = set()
        for sent in sents:
            names.update(w.lower() for w in words(sent)[1:] if w[:1].isupper())
        ctx_names.append(names)
        for i, s in enumerate(sents):
            first = len(single_texts)
            single_texts.append(s)
            unit_rows.append((first,))
            sent_texts.append(s)
            sent_doc.append(d)
            if i + 1 < len(sents):
                unit_rows.append((first, first + 1))
                sent_texts.append(f"{s} {sents[i + 1]}")
                sent_doc.append(d)
        ctx_words = [norm(w) for w in words(ctx)]
        toks = set(ctx_words)
        ctx_tokens.append(toks)
        ctx_stems.append({_stem(t) for t in toks})
        ctx_numbers.append({f for w in words(ctx) if w[:1].isdigit() for f in _number_forms(w)})

    check_texts = [c.check_text for c in claims]
    # Vectorise single sentences only; a window's vector is the sum of its sentences' vectors.
    word_vec = TfidfVectorizer(analyzer="word", ngram_range=(1, 2), sublinear_tf=True, token_pattern=r"(?u)\b\w+\b", lowercase=True, norm=None)
    w_all = word_vec.fit_transform(single_texts + check_texts)
    n_single = len(single_texts)
    member_rows = np.repeat(np.arange(len(unit_rows)), [len(u) for u in unit_rows])
    member_cols = np.fromiter((j for u in unit_rows for j in u), dtype=np.int64, count=len(member_rows))
    units = sp.csr_matrix((np.ones(len(member_rows)), (member_rows, member_cols)), shape=(len(unit_rows), n_single))
    unit_m = normalize(units @ w_all[:n_single])
    claim_m = normalize(w_all[n_single:])
    word_sim, best_idx = _best_match(claim_m, unit_m, np.asarray(claim_doc), np.asarray(sent_doc))

    vocab = word_vec.vocabulary_
    idf = word_vec.idf_
    default_idf = float(idf.max()) if len(idf) else 1.0

    feats = np.zeros((n, len(FEATURES)))
    best_sentence: list[str] = []
    missing_all: list[list[str]] = []
    for i, claim in enumerate(claims):
        d = claim_doc[i]
        toks, stems, nums = ctx_tokens[d], ctx_stems[d], ctx_numbers[d]
        given = {norm(w) for w in words(claim.given_text)}
        raw = words(claim.text)
        best = sent_texts[best_idx[i]] if best_idx[i] >= 0 else ""
        local = {norm(w) for w in words(best)}
        local_stems = {_stem(t) for t in local}
        local_numbers = {n for x in local if x[:1].isdigit() for n in _number_forms(x)}
        local_w = 0.0
        new_w = new_tot = key_w = key_tot = word_w = word_tot = 0.0
        normed = [norm(w) for w in raw]
        token_cov = float(np.mean([t in toks or _stem(t) in stems for t in normed])) if normed else 1.0

        num_missing = name_missing = 0.0
        missing: list[str] = []
        for pos, w in enumerate(raw):
            t = norm(w)
            if t in STOPWORDS or (len(t) < 2 and not t.isdigit()):
                continue
            weight = float(idf[vocab[t]]) if t in vocab else default_idf
            key = _is_key_term(w, pos, ctx_names[d])
            # Numbers compare as values, names exactly ("Gustavo" is not "Gustave"), other
            # words also by stem ("originated" matches "originates").
            if w[:1].isdigit():
                found = bool(_number_forms(w) & nums)
                in_local = bool(_number_forms(w) & local_numbers)
            elif key:
                found, in_local = t in toks, t in local
            else:
                found = t in toks or _stem(t) in stems
                in_local = t in local or _stem(t) in local_stems
            if t in given:
                continue
            new_tot += weight
            new_w += weight * found
            local_w += weight * in_local
            if key:
                key_tot += weight
                key_w += weight * found
                if not found and not w[:1].isdigit():
                    name_missing = 1.0
            else:
                word_tot += weight
                word_w += weight * found
            if w[:1].isdigit() and not found:
                num_missing = 1.0
            if not found:
                missing.append(w)
        claim_lower = {w.lower() for w in raw}
        best_lower = {w.lower() for w in words(best)} | ({"n't"} if "n't" in best else set())
        neg_claim = bool(claim_lower & NEGATIONS) or "n't" in claim.text
        neg_best = bool(best_lower & NEGATIONS)
        feats[i] = [
            key_w / key_tot if key_tot else 1.0,
            word_w / word_tot if word_tot else 1.0,
            token_cov,
            num_missing,
            name_missing,
            word_sim[i],
            float(neg_claim != neg_best),
            float(bool(claim_lower & CONTRAST_CUES)),
            local_w / new_tot if new_tot else 1.0,
            float(new_tot == 0 and bool(claim.given_text)),
        ]
        best_sentence.append(best)
        missing_all.append(missing)
    return ClaimEvidence(feats, best_sentence, missing_all)


def _best_match(claims_m: sp.csr_matrix, sents_m: sp.csr_matrix, claim_doc: np.ndarray, sent_doc: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Max cosine of each claim against the sentences of its own context, vectorised over
    all (claim, sentence) pairs of the batch. Rows are L2-normalised by TfidfVectorizer."""
    n = claims_m.shape[0]
    order = np.argsort(sent_doc, kind="stable")
    sent_doc_sorted = sent_doc[order]
    starts = np.searchsorted(sent_doc_sorted, claim_doc, side="left")
    ends = np.searchsorted(sent_doc_sorted, claim_doc, side="right")
    counts = ends - starts
    pair_claim = np.repeat(np.arange(n), counts)
    offsets = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
    pair_sent = order[np.repeat(starts, counts) + offsets]
    best = np.zeros(n)
    best_idx = np.full(n, -1)
    if len(pair_claim) == 0:
        return best, best_idx
    sims = np.asarray(claims_m[pair_claim].multiply(sents_m[pair_sent]).sum(axis=1)).ravel()
    # Per-claim argmax: sort pairs by (claim, sim) and take the last of each claim.
    idx = np.lexsort((sims, pair_claim))
    last = np.r_[pair_claim[idx][1:] != pair_claim[idx][:-1], True]
    winners = idx[last]
    best[pair_claim[winners]] = sims[winners]
    best_idx[pair_claim[winners]] = pair_sent[winners]
    return best, best_idx


# A claim whose words are all in its best evidence window but whose polarity differs ("X is not
# in Paris" vs "X is in Paris") is a contradiction, whatever the learned weights say: HaluEval has
# too few such answers for the fit to learn it, so this rule is fixed by design, not fitted.
CONTRADICTION_LOCAL_COVERAGE = 0.8
CONTRADICTION_FACTOR = 0.2


def contradicted(features: np.ndarray) -> np.ndarray:
    f = FEATURES.index
    return (features[:, f("negation_mismatch")] > 0) & (features[:, f("local_coverage")] >= CONTRADICTION_LOCAL_COVERAGE)


def support_probability(features: np.ndarray, weights: np.ndarray = WEIGHTS, bias: float = BIAS) -> np.ndarray:
    p = 1.0 / (1.0 + np.exp(-(features @ weights + bias)))
    return np.where(contradicted(features), p * CONTRADICTION_FACTOR, p)
