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

from evaluators.claims import CONTRAST_CUES, FRAMING, NEGATIONS, STOPWORDS, Claim, norm, split_sentences, words

FEATURES = [
    "key_coverage",  # IDF-weighted share of the claim's new names and numbers found in the context
    "word_coverage",  # same for its other new content words (paraphrase-prone, so kept apart; also found by a shared 5-letter prefix)
    "token_coverage",  # share of all the claim's words, function words too, found in the context (framing words count as found)
    "missing_number",  # 1 if a new number or date in the claim is absent from the context
    "missing_name",  # 1 if a new name in the claim is absent from the context
    "word_sim",  # best cosine (word 1-2 gram TF-IDF) claim vs one context sentence (or window)
    "negation_mismatch",  # claim negates and its best sentence does not, or the reverse
    "contrast_cue",  # claim corrects/contrasts ("actually", "instead", "not X")
    "local_coverage",  # share of new content words found in the best-matching sentence/window
    "nothing_new",  # 1 if the claim adds no content word beyond the question it answers
    "few_missing",  # 1 / (1 + number of the claim's new content words not found in the context)
]

# Logistic weights over FEATURES, fitted on the 2,000 HaluEval QA dev rows with each weight's
# sign fixed by the feature's meaning (bench/groundedness_quality.py --refit prints them; its
# 5-fold grouped cross-validation gives the out-of-sample AUROC quoted in docs/benchmarks.md).
WEIGHTS = np.array([1.587, 3.281, 2.093, -1.051, -1.444, 0.411, -0.252, -1.666, 0.415, 0.000, 4.267])
BIAS = -10.258
assert len(WEIGHTS) == len(FEATURES)
# Claim supported when its support probability reaches this: 0.5, the decision point of the
# fitted (calibrated) probability, fixed by design. The F1-best threshold on the QA dev set
# (about 0.73 under cross-validation) is not used: it sits where QA's hallucinated sentences pile
# up just under its copied-span right answers, a property of that data set, and it failed most
# right answers of other shapes (paraphrased summaries, dialogue turns). docs/benchmarks.md.
CLAIM_THRESHOLD = 0.5


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


# A common word whose first letters occur in the context is a word-family variant of it
# ("explosion" ~ "exploded", "belief" ~ "believed"): how a paraphrase changes words
# without changing the fact. Names and numbers never match this way.
PREFIX = 5


def _prefixes(tokens: set[str]) -> set[str]:
    return {t[:PREFIX] for t in tokens if len(t) >= PREFIX and not t[:1].isdigit()}


_GLUED = re.compile(r"(?<=[a-z]{3})(?=[A-Z][a-z])")


def _unglued(token: str) -> list[str]:
    """Parts of a token glued from two words by a lost space or line break ("TurboTurbo",
    "DoggSnoop", common in text scraped from tables or knowledge-graph dumps): the parts are
    added to the context's words, the glued token is kept too."""
    return _GLUED.split(token) if token[:1].isalpha() and not token.islower() else []


@dataclass
class _Sentence:
    tokens: set[str]
    stems: set[str]
    numbers: set[str]


def _sentence_terms(text: str) -> _Sentence:
    raw = words(text)
    toks = {norm(w) for w in raw}
    for w in raw:
        toks.update(norm(x) for x in _unglued(w))
    return _Sentence(toks, {_stem(t) for t in toks}, {f for w in raw if w[:1].isdigit() for f in _number_forms(w)})


def claim_evidence(claims: list[Claim], contexts: list[str], claim_doc: list[int]) -> ClaimEvidence:
    """Features for claims; claim_doc[i] is the index in `contexts` of claim i's context.
    (Looking up a claim's words only in its few best-matching sentences, so that a long document
    does not find common words by chance, was tried: it lowered the QA CV AUROC by 0.007 and did
    not help on summaries, so words are looked up in the whole context.)"""
    from sklearn.feature_extraction.text import TfidfVectorizer  # ~1 s to import: only when scoring, not for `routecheck --help`
    from sklearn.preprocessing import normalize

    n = len(claims)
    if n == 0:
        return ClaimEvidence(np.zeros((0, len(FEATURES))), [], [])
    # Context sentences, plus windows of two adjacent sentences (claims often fuse two facts).
    sent_texts: list[str] = []  # evidence units: single sentences and two-sentence windows
    sent_doc: list[int] = []
    single_texts: list[str] = []
    unit_rows: list[tuple[int, ...]] = []  # the single sentences each unit is made of
    ctx_terms: list[_Sentence] = []
    ctx_names: list[set[str]] = []
    for d, ctx in enumerate(contexts):
        sents = split_sentences(ctx) or [ctx]
        names: set[str] = set()
        for sent in sents:
            for w in words(sent)[1:]:
                if w[:1].isupper():
                    names.add(w.lower())
                    names.update(x.lower() for x in _unglued(w))
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
        ctx_terms.append(_sentence_terms(ctx))

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
    word_sim, top = _best_match(claim_m, unit_m, np.asarray(claim_doc), np.asarray(sent_doc))

    ctx_prefixes = [_prefixes(c.tokens) for c in ctx_terms]
    vocab = word_vec.vocabulary_
    idf = word_vec.idf_
    default_idf = float(idf.max()) if len(idf) else 1.0
    single_terms: dict[int, _Sentence] = {}

    def terms_of(unit: int) -> _Sentence:
        """Words of an evidence unit: the union of its sentences' (computed once per sentence)."""
        if unit < 0:
            return _Sentence(set(), set(), set())
        parts = []
        for j in unit_rows[unit]:
            t = single_terms.get(j)
            if t is None:
                t = single_terms[j] = _sentence_terms(single_texts[j])
            parts.append(t)
        if len(parts) == 1:
            return parts[0]
        return _Sentence(set().union(*(t.tokens for t in parts)), set().union(*(t.stems for t in parts)), set().union(*(t.numbers for t in parts)))

    feats = np.zeros((n, len(FEATURES)))
    best_sentence: list[str] = []
    missing_all: list[list[str]] = []
    for i, claim in enumerate(claims):
        d = claim_doc[i]
        glob = ctx_terms[d]
        toks, stems, nums = glob.tokens, glob.stems, glob.numbers
        u = int(top[i, 0])
        local = terms_of(u)
        best = sent_texts[u] if u >= 0 else ""
        given = {norm(w) for w in words(claim.given_text)}
        raw = words(claim.text)
        local_w = 0.0
        new_tot = key_w = key_tot = word_w = word_tot = 0.0
        normed = [norm(w) for w in raw]
        token_cov = float(np.mean([t in toks or _stem(t) in stems or t in FRAMING for t in normed])) if normed else 1.0

        num_missing = name_missing = 0.0
        n_missing = 0
        missing: list[str] = []
        for pos, w in enumerate(raw):
            t = normed[pos]
            if t in STOPWORDS or (len(t) < 2 and not t.isdigit()):
                continue
            weight = float(idf[vocab[t]]) if t in vocab else default_idf
            key = _is_key_term(w, pos, ctx_names[d])
            # Numbers compare as values, names exactly ("Gustavo" is not "Gustave"), other
            # words also by stem ("originated" matches "originates").
            if w[:1].isdigit():
                forms = _number_forms(w)
                found, in_local = bool(forms & nums), bool(forms & local.numbers)
            elif key:
                found, in_local = t in toks, t in local.tokens
            else:
                st = _stem(t)
                found = t in toks or st in stems or (len(t) >= PREFIX and t[:PREFIX] in ctx_prefixes[d])
                in_local = t in local.tokens or st in local.stems
            if t in given:
                continue
            new_tot += weight
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
                n_missing += 1
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
            1.0 / (1.0 + n_missing),
        ]
        best_sentence.append(best)
        missing_all.append(missing)
    return ClaimEvidence(feats, best_sentence, missing_all)


_MAX_PAIRS = 200_000  # (claim, unit) pairs scored at once: bounds memory on long contexts


def _best_match(claims_m: sp.csr_matrix, sents_m: sp.csr_matrix, claim_doc: np.ndarray, sent_doc: np.ndarray, k: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Best cosine of each claim against the units of its own context, and the indices of its
    k best units (best first; -1 where the context has fewer), vectorised over all (claim, unit)
    pairs of the batch, in chunks of claims so a long context cannot exhaust memory. Rows are
    L2-normalised."""
    n = claims_m.shape[0]
    best = np.zeros(n)
    top = np.full((n, k), -1, dtype=np.int64)
    order = np.argsort(sent_doc, kind="stable")
    sent_doc_sorted = sent_doc[order]
    starts = np.searchsorted(sent_doc_sorted, claim_doc, side="left")
    counts = np.searchsorted(sent_doc_sorted, claim_doc, side="right") - starts
    c0 = 0
    while c0 < n:
        # Largest run of claims whose pairs fit in _MAX_PAIRS (at least one claim).
        c1 = c0 + max(1, int(np.searchsorted(np.cumsum(counts[c0:]), _MAX_PAIRS, side="right")))
        cnt = counts[c0:c1]
        pair_claim = np.repeat(np.arange(c0, c1), cnt)
        if len(pair_claim):
            offsets = np.arange(cnt.sum()) - np.repeat(np.cumsum(cnt) - cnt, cnt)
            pair_sent = order[np.repeat(starts[c0:c1], cnt) + offsets]
            sims = np.asarray(claims_m[pair_claim].multiply(sents_m[pair_sent]).sum(axis=1)).ravel()
            # Sort pairs by (claim, similarity descending, unit); the first k of each claim win.
            idx = np.lexsort((pair_sent, -sims, pair_claim))
            pc = pair_claim[idx]
            first = np.r_[True, pc[1:] != pc[:-1]]
            group_start = np.maximum.accumulate(np.where(first, np.arange(len(pc)), 0))
            rank = np.arange(len(pc)) - group_start
            keep = rank < k
            top[pc[keep], rank[keep]] = pair_sent[idx][keep]
            best[pc[first]] = sims[idx][first]
        c0 = c1
    return best, top


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
