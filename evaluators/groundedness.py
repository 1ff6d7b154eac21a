"""groundedness and hallucination: is each claim of the answer supported by the context?

Backends (option `backend`):
- `lexical` (default): CPU, no download, vectorised per batch (evaluators/lexical.py).
- `nli`: an NLI cross-encoder from a local directory (`model_dir`), loaded only when chosen.
- `llm`: a judge route labels each claim SUPPORTED / UNSUPPORTED / CONTRADICTED.

Both evaluators share the claim analysis; they differ in what they report:
- groundedness score = mean support probability of the claims (graded);
- hallucination score = 1 - share of claims that are unsupported or contradicted; passed only
  when no claim is.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from evaluators.base import EvalRecord, EvalResult
from evaluators.registry import evaluator
from evaluators.claims import Claim, build_claims, split_sentences
from evaluators import lexical


@dataclass
class ClaimVerdict:
    claim: str
    support: float  # probability-like, in [0, 1]
    supported: bool
    contradicted: bool = False
    evidence: str = ""
    missing: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"claim": self.claim, "support": round(self.support, 4), "supported": self.supported}
        if self.contradicted:
            d["contradicted"] = True
        if self.evidence:
            d["evidence"] = self.evidence[:300]
        if self.missing:
            d["not_in_context"] = self.missing
        return d


def _inputs(record: EvalRecord) -> tuple[str | None, str | None]:
    """(answer, context) or a reason it is not applicable. The context is `record.evidence`: the
    row's context and, in an agent trajectory, the scripted tool results the model was sent."""
    if not record.answered:
        return None, f"the trajectory ended without a final answer ({record.stop_reason})"
    if not (record.evidence or "").strip():
        return None, "no context to check against"
    if not (record.text or "").strip():
        return None, "no answer text"
    return record.text, None


def analyse(records: list[EvalRecord], backend: str = "lexical", threshold: float | None = None, **backend_options: Any) -> list[list[ClaimVerdict] | str]:
    """Per record: its claim verdicts, or a string saying why it is not applicable."""
    out: list[list[ClaimVerdict] | str] = [""] * len(records)
    claims: list[Claim] = []
    claim_doc: list[int] = []
    contexts: list[str] = []
    context_index: dict[str, int] = {}  # routes answering one prompt share its context: analyse it once
    claim_span: dict[int, tuple[int, int]] = {}
    for i, rec in enumerate(records):
        answer, why = _inputs(rec)
        if why:
            out[i] = why
            continue
        cs = build_claims(answer or "", rec.question, rec.conversation)
        if not cs:
            out[i] = "answer has no checkable claim"
            continue
        ctx = rec.evidence or ""
        # The llm backend sends one request per answer, so its answers keep their own entry.
        d = context_index.setdefault(ctx, len(contexts)) if backend != "llm" else len(contexts)
        if d == len(contexts):
            contexts.append(ctx)
        claim_span[i] = (len(claims), len(claims) + len(cs))
        claims.extend(cs)
        claim_doc.extend([d] * len(cs))
    if claims:
        if backend not in BACKENDS:
            raise ValueError(f"groundedness: unknown backend {backend!r}; use {', '.join(BACKENDS)}")
        verdicts = BACKENDS[backend].verify(claims, contexts, claim_doc, threshold, **backend_options)
        for i, (a, b) in claim_span.items():
            out[i] = verdicts[a:b]
    return out


def _lexical(claims: list[Claim], contexts: list[str], claim_doc: list[int], threshold: float | None) -> list[ClaimVerdict]:
    ev = lexical.claim_evidence(claims, contexts, claim_doc)
    prob = lexical.support_probability(ev.features)
    thr = lexical.CLAIM_THRESHOLD if threshold is None else threshold
    contra = lexical.contradicted(ev.features)
    verdicts = []
    for i, c in enumerate(claims):
        supported = bool(prob[i] >= thr)
        verdicts.append(
            ClaimVerdict(
                claim=c.text,
                support=float(prob[i]),
                supported=supported,
                contradicted=bool(contra[i]),
                evidence=ev.best_sentence[i],
                missing=ev.missing[i],
            )
        )
    return verdicts


_NLI_CACHE: dict[str, Any] = {}


def _nli(claims: list[Claim], contexts: list[str], claim_doc: list[int], threshold: float | None, model_dir: str | None = None, batch_size: int = 16, max_length: int = 512) -> list[ClaimVerdict]:
    """Entailment of each claim by its best context window, with a local cross-encoder."""
    if not model_dir:
        raise ValueError("groundedness backend 'nli' needs option 'model_dir' (a local model directory)")
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if model_dir not in _NLI_CACHE:
        tok = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        model = AutoModelForSequenceClassification.from_pretrained(model_dir, local_files_only=True).eval()
        _NLI_CACHE[model_dir] = (tok, model)
    tok, model = _NLI_CACHE[model_dir]
    labels = {v.lower(): int(k) for k, v in model.config.id2label.items()}
    ent = next((i for name, i in labels.items() if name.startswith("entail")), None)
    con = next((i for name, i in labels.items() if name.startswith("contra")), None)
    if ent is None:
        raise ValueError(f"{model_dir}: model labels {list(labels)} have no 'entailment' label")
    windows = [_windows(ctx) for ctx in contexts]
    pairs = [(w, c.check_text, k) for k, (c, d) in enumerate(zip(claims, claim_doc)) for w in windows[d]]
    ent_p = np.zeros(len(pairs))
    con_p = np.zeros(len(pairs))
    with torch.no_grad():
        for s in range(0, len(pairs), batch_size):
            chunk = pairs[s : s + batch_size]
            enc = tok([p[0] for p in chunk], [p[1] for p in chunk], truncation="only_first", max_length=max_length, padding=True, return_tensors="pt")
            probs = torch.softmax(model(**enc).logits, dim=-1).numpy()
            ent_p[s : s + len(chunk)] = probs[:, ent]
            if con is not None:
                con_p[s : s + len(chunk)] = probs[:, con]
    thr = 0.5 if threshold is None else threshold
    pairs_of: dict[int, list[int]] = {}
    for j, p in enumerate(pairs):
        pairs_of.setdefault(p[2], []).append(j)
    verdicts = []
    for k, c in enumerate(claims):
        idx = pairs_of[k]
        best = max(idx, key=lambda j: ent_p[j])
        support = float(ent_p[best])
        contradicted = float(max(con_p[j] for j in idx)) > 0.5 and support < thr
        verdicts.append(ClaimVerdict(claim=c.text, support=support, supported=support >= thr, contradicted=contradicted, evidence=pairs[best][0]))
    return verdicts


def _windows(context: str, max_chars: int = 1500) -> list[str]:
    """Consecutive sentences packed into windows that fit the cross-encoder, overlapping by one."""
    sents = split_sentences(context) or [context]
    out, cur = [], []
    for s in sents:
        if cur and sum(len(x) for x in cur) + len(s) > max_chars:
            out.append(" ".join(cur))
            cur = cur[-1:]
        cur.append(s)
    out.append(" ".join(cur))
    return out


_VERDICT = re.compile(r"\b(?:claim\s*)?(\d+)\s*[:.)\-]\s*\**\s*(SUPPORTED|UNSUPPORTED|CONTRADICTED|NOT SUPPORTED)", re.I)


def _llm(claims: list[Claim], contexts: list[str], claim_doc: list[int], threshold: float | None = None, route: str | None = None, routes: str = "routes.yaml", base_url: str | None = None, model: str | None = None) -> list[ClaimVerdict]:
    """One judge request per record listing its claims; unparsed claims count as unsupported."""
    from evaluators.judge_client import JudgeClient, resolve_judge_route

    client = JudgeClient(resolve_judge_route(route, routes, base_url, model))
    docs = sorted(set(claim_doc))
    claim_ids = {d: [k for k, cd in enumerate(claim_doc) if cd == d] for d in docs}
    convs = []
    for d in docs:
        listing = "\n".join(f"{n + 1}. {claims[k].check_text}" for n, k in enumerate(claim_ids[d]))
        convs.append([
            {"role": "system", "content": "You check claims against a source text. Answer only from the source."},
            {"role": "user", "content": f"Source:\n{contexts[d]}\n\nClaims:\n{listing}\n\nFor each claim write one line 'N: SUPPORTED', 'N: UNSUPPORTED' or 'N: CONTRADICTED'."},
        ])
    try:
        replies = client.complete_many(convs)
    finally:
        client.close()
    verdicts: list[ClaimVerdict | None] = [None] * len(claims)
    for d, reply in zip(docs, replies):
        labels = {} if isinstance(reply, Exception) else {int(m.group(1)): m.group(2).upper() for m in _VERDICT.finditer(reply)}
        for n, k in enumerate(claim_ids[d]):
            label = labels.get(n + 1)
            verdicts[k] = ClaimVerdict(
                claim=claims[k].text,
                support=1.0 if label == "SUPPORTED" else 0.0,
                supported=label == "SUPPORTED",
                contradicted=label == "CONTRADICTED",
                evidence="" if label else f"judge gave no verdict ({reply if isinstance(reply, Exception) else 'unparsed reply'})",
            )
    return [v for v in verdicts if v is not None]


@dataclass(frozen=True)
class Backend:
    """A way to verify claims against contexts: `verify(claims, contexts, claim_doc, threshold, **options)`
    returns one ClaimVerdict per claim; `options` are the evaluator options it takes."""

    verify: Callable[..., list[ClaimVerdict]]
    options: frozenset[str] = frozenset()
    default_threshold: float = 0.5


# The groundedness back-ends. A new one: a verify function above and one line here.
BACKENDS: dict[str, Backend] = {
    "lexical": Backend(_lexical, default_threshold=lexical.CLAIM_THRESHOLD),
    "nli": Backend(_nli, frozenset({"model_dir", "batch_size", "max_length"})),
    "llm": Backend(_llm, frozenset({"route", "routes", "base_url", "model"}), default_threshold=1.0),
}
_BACKEND_OPTIONS = {name: set(b.options) for name, b in BACKENDS.items()}


class _ClaimEvaluator:
    """Shared options of groundedness and hallucination, checked when the evaluator is built so a
    typo or a missing model directory fails before any scoring starts."""

    def __init__(
        self,
        backend: str = "lexical",
        threshold: float | None = None,
        model_dir: str | None = None,
        batch_size: int = 16,
        max_length: int = 512,
        route: str | None = None,
        routes: str = "routes.yaml",
        base_url: str | None = None,
        model: str | None = None,
    ):
        if backend not in _BACKEND_OPTIONS:
            raise ValueError(f"unknown backend {backend!r}; use {', '.join(BACKENDS)}")
        given = {"model_dir": model_dir, "route": route, "base_url": base_url, "model": model}
        stray = sorted(k for k, v in given.items() if v is not None and k not in _BACKEND_OPTIONS[backend])
        if stray:
            raise ValueError(f"option(s) {stray} do not apply to backend {backend!r}")
        if threshold is not None and not 0.0 <= threshold <= 1.0:
            raise ValueError(f"threshold must be in [0, 1], got {threshold}")
        self.backend, self.threshold = backend, threshold
        self.options: dict[str, Any] = {}
        if backend == "nli":
            if not model_dir:
                raise ValueError("backend 'nli' needs option 'model_dir' (a local model directory)")
            if not Path(model_dir).is_dir():
                raise ValueError(f"backend 'nli': model_dir {model_dir!r} is not a directory")
            self.options = {"model_dir": model_dir, "batch_size": batch_size, "max_length": max_length}
        elif backend == "llm":
            from evaluators.judge_client import resolve_judge_route

            resolve_judge_route(route, routes, base_url, model)  # fail now on a bad route
            self.options = {"route": route, "routes": routes, "base_url": base_url, "model": model}

    def verdicts(self, records: list[EvalRecord]) -> list[list[ClaimVerdict] | str]:
        return analyse(records, self.backend, self.threshold, **self.options)


@evaluator("groundedness", version="1")
class Groundedness(_ClaimEvaluator):
    """Mean support of the answer's claims by the context; unsupported claims listed."""

    def evaluate(self, records: list[EvalRecord]) -> list[EvalResult]:
        # llm verdicts are 0/1, so its default asks for every claim to be supported.
        default_thr = BACKENDS[self.backend].default_threshold
        thr = default_thr if self.threshold is None else self.threshold
        results = []
        for verdicts in self.verdicts(records):
            if isinstance(verdicts, str):
                results.append(EvalResult.not_applicable(verdicts))
                continue
            score = float(np.mean([v.support for v in verdicts]))
            unsupported = [v.claim for v in verdicts if not v.supported]
            reason = "all claims supported" if not unsupported else f"{len(unsupported)}/{len(verdicts)} claims unsupported: {unsupported[0][:80]!r}"
            details = {"backend": self.backend, "threshold": thr, "claims": [v.as_dict() for v in verdicts], "unsupported": unsupported}
            results.append(EvalResult(score=score, passed=score >= thr, reason=reason, details=details))
        return results


@evaluator("hallucination", version="1")
class Hallucination(_ClaimEvaluator):
    """1 - share of claims unsupported or contradicted by the context; passed when none is."""

    def evaluate(self, records: list[EvalRecord]) -> list[EvalResult]:
        results = []
        for verdicts in self.verdicts(records):
            if isinstance(verdicts, str):
                results.append(EvalResult.not_applicable(verdicts))
                continue
            bad = [v for v in verdicts if not v.supported or v.contradicted]
            share = len(bad) / len(verdicts)
            reason = "no hallucinated claim" if not bad else f"{len(bad)}/{len(verdicts)} claims hallucinated: {bad[0].claim[:80]!r}"
            details = {
                "backend": self.backend,
                "hallucinated_share": share,
                "hallucinated_claims": [v.as_dict() for v in bad],
                "contradicted": [v.claim for v in bad if v.contradicted],
                "n_claims": len(verdicts),
            }
            results.append(EvalResult(score=1.0 - share, passed=not bad, reason=reason, details=details))
        return results
