"""Exploratory cohorts: TF-IDF + KMeans clusters of the prompt text, and a worst-slice search.

These are found after looking at the data, so they are reported apart from the pre-registered
cohorts, in their own Holm families: clusters x metrics, and every slice searched x metrics
(the correction counts all slices searched, not just the ones shown).
"""

from __future__ import annotations

import math

import duckdb
import numpy as np
import pandas as pd
from sklearn.cluster import KMeans
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.metrics import silhouette_score

from harness.report import load
from harness.report.compare import PairedRow, compare_frame, quality_results
from harness.report.model import Comparison, Discovery

FIT_MAX = 20000          # prompts used to fit the vectoriser and KMeans (all are assigned)
MAX_K = 12
SLICE_TERMS = 40         # terms whose prompts form candidate slices
MIN_SLICE = 10
SHOWN_SLICES = 5


def discover_cohorts(con: duckdb.DuckDBPyConnection, run_id: str, quality: pd.DataFrame, candidates: list[str],
                     alpha: float, rng: np.random.Generator, reason: str, warnings: list[str]) -> Discovery | None:
    """`quality`: the run's paired quality frame with prompt ids (as build_report loaded it)."""
    texts = load.prompt_texts(con, run_id)
    texts = texts[texts["prompt_id"].isin(quality["prompt_id"].unique())]
    n = len(texts)
    if n < 20:
        warnings.append(f"cohort discovery skipped: {n} prompts with text (need at least 20)")
        return None
    seed = int(rng.integers(0, 2**31 - 1))
    fit_idx = rng.choice(n, size=min(n, FIT_MAX), replace=False)
    vec = TfidfVectorizer(sublinear_tf=True, stop_words="english", min_df=2, max_features=20000)
    try:
        X_fit = vec.fit_transform(texts["text"].iloc[fit_idx])
    except ValueError:  # empty vocabulary
        warnings.append("cohort discovery skipped: prompt texts have no usable words")
        return None
    sil: dict[str, float] = {}
    best = None
    for k in range(2, min(MAX_K, len(fit_idx) // 10) + 1):
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(X_fit)
        if len(set(km.labels_)) < 2:
            continue
        s = float(silhouette_score(X_fit, km.labels_, sample_size=min(len(fit_idx), 3000), random_state=seed))
        sil[str(k)] = s
        if best is None or s > best[0]:
            best = (s, k, km)
    if best is None:
        warnings.append("cohort discovery skipped: could not form two clusters")
        return None
    _, k, km = best
    X = vec.transform(texts["text"])
    labels = km.predict(X)
    terms = np.asarray(vec.get_feature_names_out())
    clusters, names = [], {}
    for c in range(k):
        top = terms[np.argsort(km.cluster_centers_[c])[::-1][:4]].tolist()
        names[c] = f"cluster {c}: " + ", ".join(top)
        clusters.append({"id": c, "label": names[c], "top_terms": top, "prompts": int(np.sum(labels == c))})
    cohort_of = pd.Series([names[c] for c in labels], index=texts["prompt_id"].to_numpy())

    rows = []
    for cand in candidates:
        rows += quality_results(quality, cand, rng, cohort_of=cohort_of)
    comparisons = compare_frame(rows, None, alpha, lambda cand, spec, scope: f"{cand}:discovered clusters")
    for c in comparisons:
        c.scope = "discovered"

    # Worst slices: every cluster plus the prompts containing each frequent term.
    slices: dict[str, np.ndarray] = {names[c]: texts["prompt_id"].to_numpy()[labels == c] for c in range(k)}
    docfreq = np.asarray((X > 0).sum(axis=0)).ravel()
    share = docfreq / n
    order = [i for i in np.argsort(docfreq)[::-1] if 0.02 <= share[i] <= 0.5][:SLICE_TERMS]
    for i in order:
        if docfreq[i] >= MIN_SLICE:
            slices[f"prompts containing '{terms[i]}'"] = texts["prompt_id"].to_numpy()[np.asarray(X[:, i].todense()).ravel() > 0]
    labelled = _label_slices(quality, slices, candidates, rng)
    slice_comps = compare_frame(labelled, None, alpha, lambda cand, spec, scope: f"{cand}:worst-slice search")
    for c in slice_comps:
        c.scope = "slice"

    def badness(c: Comparison) -> float:
        if math.isnan(c.diff):
            return -math.inf
        return -c.diff if c.higher_is_better else c.diff

    worst = sorted(slice_comps, key=lambda c: (c.p_adjusted if not math.isnan(c.p_adjusted) else 2, -badness(c)))
    worst = [c for c in worst if badness(c) > 0][:SHOWN_SLICES]
    return Discovery(
        reason=reason, method="TF-IDF (sublinear tf, English stop words) + KMeans; k by silhouette"
        + (" (k is the largest tried: finer clusters may exist)" if str(k) == max(sil, key=int) else ""),
        k=k, silhouette=sil, clusters=clusters, comparisons=comparisons, worst_slices=worst,
        slices_searched=len(slices), correction=f"Holm over {len(slices)} slices x metrics searched",
    )


def _label_slices(quality: pd.DataFrame, slices: dict[str, np.ndarray], candidates: list[str],
                  rng: np.random.Generator) -> list[PairedRow]:
    rows = []
    for label, ids in slices.items():
        sub = quality[quality["prompt_id"].isin(ids)].assign(cohort=label)
        for cand in candidates:
            for row in quality_results(sub, cand, rng):
                if row.scope == "overall":
                    rows.append(PairedRow(row.candidate, row.spec, "slice", label, row.result))
    return rows
