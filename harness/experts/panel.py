"""What the report and the gate show of expert routing (pure: statistics in, panel rows out).

A panel row is one (route, cohort, source): its flat metrics (the names a gate policy uses, such
as `dropped_token_rate@1.25`), the same metrics for the route's other cohorts pooled, and the
utilisation per layer for the heatmap. `explain` is the one sentence written beside a regression.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from harness.experts.stats import GroupStats, factor_key

# The sources in order of trust: counted by the server, returned in the response, replayed offline.
SOURCE_ORDER = ("live", "returned", "probe")

# Routing metrics a gate policy may name; capacity metrics take `@<factor>`.
SCALAR_METRICS = ("utilization_entropy", "router_entropy", "top_k_mass", "imbalance_cv", "max_over_mean")
CAPACITY_METRICS = ("assignment_overflow_rate", "dropped_token_rate")
HIGHER_IS_WORSE = {"imbalance_cv": True, "max_over_mean": True, "assignment_overflow_rate": True,
                   "dropped_token_rate": True, "utilization_entropy": False, "router_entropy": False, "top_k_mass": False}
DEFAULT_FACTOR = 1.25

IMBALANCE_NOTE = ("Capacity figures are a what-if: vLLM and transformers run Mixtral-style MoE dropless, so "
                  "nothing was dropped here; they show what a capacity-limited (expert-parallel, fixed-buffer, "
                  "GShard/Switch-style) deployment would drop. Imbalance is what expert parallelism pays in p99 "
                  "even when nothing is dropped.")


@dataclass
class PanelRow:
    route: str
    cohort: str
    source: str
    responses: int
    tokens: int
    num_experts: int
    top_k: int
    metrics: dict[str, float | None]
    rest: dict[str, float | None] | None  # the route's other cohorts pooled (None for "(all)" or a lone cohort)
    utilization: list[list[float]]        # per layer: E shares
    utilization_mean: list[float]
    capacity_factors: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def metric_name(name: str) -> tuple[str, float | None]:
    """`dropped_token_rate@1.25` -> ("dropped_token_rate", 1.25); scalar names -> (name, None).
    Raises ValueError naming the choices for anything else."""
    base, _, factor = name.partition("@")
    if base in SCALAR_METRICS and not factor:
        return base, None
    if base in CAPACITY_METRICS and factor:
        try:
            return base, float(factor)
        except ValueError:
            pass
    raise ValueError(f"unknown expert metric {name!r}: expected one of {', '.join(SCALAR_METRICS)} or "
                     f"{'/'.join(CAPACITY_METRICS)}@<capacity factor>, e.g. dropped_token_rate@1.25")


def is_expert_metric(name: str) -> bool:
    try:
        metric_name(name)
        return True
    except ValueError:
        return False


def flat_metrics(s: GroupStats) -> dict[str, float | None]:
    """Layer means of every routing metric, capacity metrics once per simulated factor."""
    out: dict[str, float | None] = {
        "utilization_entropy": s.utilization_entropy.mean, "router_entropy": s.router_entropy.mean,
        "top_k_mass": s.top_k_mass.mean, "imbalance_cv": s.imbalance_cv.mean, "max_over_mean": s.max_over_mean.mean,
    }
    for c in s.capacity:
        out[f"assignment_overflow_rate@{factor_key(c.factor)}"] = c.assignment_overflow_rate.mean
        out[f"dropped_token_rate@{factor_key(c.factor)}"] = c.dropped_token_rate.mean
    return out


def lookup(metrics: dict[str, float | None], name: str) -> float | None:
    """A metric by its policy name (`dropped_token_rate@1.25` matches the stored key `...@1.25`)."""
    base, factor = metric_name(name)
    return metrics.get(base if factor is None else f"{base}@{factor_key(factor)}")


def panel_rows(stats: dict[tuple[str, str, str], GroupStats],
               rest: dict[tuple[str, str, str], GroupStats]) -> list[PanelRow]:
    """Rows sorted by route, source trust, then cohort with "(all)" last."""
    rows = []
    for (route, cohort, source), s in stats.items():
        r = rest.get((route, cohort, source))
        rows.append(PanelRow(
            route=route, cohort=cohort, source=source, responses=s.responses, tokens=s.tokens,
            num_experts=s.num_experts, top_k=s.top_k, metrics=flat_metrics(s),
            rest=flat_metrics(r) if r is not None else None,
            utilization=[list(u) for u in s.utilization], utilization_mean=list(s.utilization_mean),
            capacity_factors=[c.factor for c in s.capacity],
        ))
    order = {s: i for i, s in enumerate(SOURCE_ORDER)}
    # A cohort's sources next to each other (live, then returned, then probe), so they read side by side.
    rows.sort(key=lambda p: (p.route, p.cohort == "(all)", p.cohort, order.get(p.source, 99)))
    return rows


@dataclass
class Agreement:
    """How closely two sources' routing of the same responses agree, per (route, cohort)."""
    route: str
    cohort: str
    sources: tuple[str, str]
    tokens: tuple[int, int]
    utilization_max_abs: float           # max |share difference| over layers and experts
    diffs: dict[str, float | None]       # second minus first source, per flat metric (None where either lacks it)


def agreements(panel: list[dict[str, Any]]) -> list[Agreement]:
    """Per (route, cohort) recorded by two or more sources: the most trusted one against each other one."""
    order = {s: i for i, s in enumerate(SOURCE_ORDER)}
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for p in panel:
        by.setdefault((p["route"], p["cohort"]), []).append(p)
    out = []
    for (route, cohort), rows in by.items():
        rows = sorted(rows, key=lambda p: order.get(p["source"], 99))
        first = rows[0]
        for other in rows[1:]:
            if len(other["utilization"]) != len(first["utilization"]):
                continue
            gap = max((abs(a - b) for la, lb in zip(first["utilization"], other["utilization"]) for a, b in zip(la, lb)),
                      default=0.0)
            diffs = {k: (None if v is None or other["metrics"].get(k) is None else other["metrics"][k] - v)
                     for k, v in first["metrics"].items()}
            out.append(Agreement(route, cohort, (first["source"], other["source"]), (first["tokens"], other["tokens"]),
                                 gap, diffs))
    return out


def gap_text(v: float) -> str:
    """A difference between sources: three decimals, or two significant digits when smaller than that shows."""
    return f"{v:.3f}" if v == 0 or v >= 0.0005 else f"{v:.1e}"


def agreement_line(route: str, found: list[Agreement]) -> str | None:
    """One line per route and pair of sources: the largest gaps over its cohorts."""
    mine = [a for a in found if a.route == route]
    if not mine:
        return None
    pairs = sorted({a.sources for a in mine})
    lines = []
    for pair in pairs:
        rows = [a for a in mine if a.sources == pair]
        worst = max(rows, key=lambda a: a.utilization_max_abs)

        def gap(key: str) -> str:
            vals = [abs(a.diffs[key]) for a in rows if a.diffs.get(key) is not None]
            return "n/a" if not vals else gap_text(max(vals))

        lines.append(f"{pair[0]} vs {pair[1]} over {len(rows)} cohort rows: utilisation shares within "
                     f"{gap_text(worst.utilization_max_abs)} (largest in {worst.cohort}), utilisation entropy within "
                     f"{gap('utilization_entropy')}, router entropy within {gap('router_entropy')}, max/mean within "
                     f"{gap('max_over_mean')}")
    return f"{route}: " + "; ".join(lines)


def shown_factor(row: PanelRow | dict[str, Any], capacity_factor: float | None) -> float | None:
    """The route's own capacity factor when simulated, else 1.25, else the first simulated."""
    factors = row["capacity_factors"] if isinstance(row, dict) else row.capacity_factors
    for f in (capacity_factor, DEFAULT_FACTOR):
        if f is not None and float(f) in factors:
            return float(f)
    return factors[0] if factors else None


def _pct(v: float | None) -> str:
    return "n/a" if v is None else f"{100 * v:.1f} %"


def _num(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def explain(row: PanelRow | dict[str, Any], capacity_factor: float | None = None) -> str:
    """One line beside a regression: the cohort's routing against the route's other cohorts."""
    d = row if isinstance(row, dict) else row.to_dict()
    m, rest = d["metrics"], d["rest"] or {}
    other = " elsewhere" if d["rest"] else ""
    parts = [f"utilisation entropy {_num(m['utilization_entropy'])}"
             + (f" vs {_num(rest.get('utilization_entropy'))}{other}" if rest else "")]
    if m.get("router_entropy") is not None:
        parts.append(f"router entropy {_num(m['router_entropy'])}"
                     + (f" vs {_num(rest.get('router_entropy'))}" if rest else ""))
    parts.append(f"max/mean load {_num(m['max_over_mean'])}" + (f" vs {_num(rest.get('max_over_mean'))}" if rest else ""))
    f = shown_factor(d, capacity_factor)
    if f is not None:
        k = factor_key(f)
        parts.append(f"overflow at cf {f:g}: {_pct(m.get(f'assignment_overflow_rate@{k}'))}"
                     + (f" vs {_pct(rest.get(f'assignment_overflow_rate@{k}'))}" if rest else "")
                     + f", dropped tokens {_pct(m.get(f'dropped_token_rate@{k}'))}"
                     + (f" vs {_pct(rest.get(f'dropped_token_rate@{k}'))}" if rest else ""))
    return f"{d['cohort']} ({d['source']}, {d['tokens']:,} tokens): " + "; ".join(parts)


def rows_for(panel: list[dict[str, Any]], route: str, cohort: str) -> list[dict[str, Any]]:
    return [p for p in panel if p["route"] == route and p["cohort"] == cohort]
