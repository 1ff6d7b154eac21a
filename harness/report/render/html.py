"""One self-contained HTML file: inline SVG plots (matplotlib), tables, worst examples.

Nothing is fetched over the network (no scripts at all, no CDN, no web fonts); every string
from the store (model text, prompt text, cohort and route names) goes through escape.html, plot
labels through escape.mpl (harness/report/render/escape.py).
"""

from __future__ import annotations

import io
import math
import re

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from harness.report.model import Comparison, Report  # noqa: E402
from harness.report.render import escape  # noqa: E402
from harness.experts.panel import IMBALANCE_NOTE  # noqa: E402
from harness.experts.stats import factor_key  # noqa: E402
from harness.report.render.text import (  # noqa: E402
    EXPERT_HEADER, HEADER, PHASE_COLUMNS, SERVING_COLUMNS, diff_text, expert_agreement, expert_notes, expert_rows, fnum, fp, headline, outcome,
    serving_rows, TRAJECTORY_HEADER, trajectory_rows,
)

COLORS = {"regression": "#c62828", "improvement": "#2e7d32", "no change": "#757575", "inconclusive": "#f9a825",
          "insufficient": "#b0bec5"}
plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})


esc = escape.html
_mpl = escape.mpl


def _pre(text: object) -> str:
    return f"<pre>{escape.html(text, multiline=True)}</pre>"


def _svg(fig, salt: str) -> str:
    plt.rcParams["svg.hashsalt"] = salt  # distinct ids per figure: several SVGs share one document
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]
    # The SVG's own <style> would apply to the whole page; its rules only set stroke joins.
    return re.sub(r"<style[^>]*>.*?</style>", "", svg, flags=re.S)


def forest_plot(rows: list[Comparison], title: str, relative: bool = False) -> str:
    rows = [c for c in rows if not math.isnan(c.diff) and (not relative or c.baseline)]
    if not rows:
        return "<p>No comparisons to plot.</p>"
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(rows) + 1.2))
    labels = []
    for i, c in enumerate(reversed(rows)):
        scale = abs(c.baseline) if relative else 1.0
        d, lo, hi = c.diff / scale, c.diff_ci[0] / scale, c.diff_ci[1] / scale
        color = COLORS[c.verdict]
        if not math.isnan(lo):
            ax.plot([lo, hi], [i, i], color=color, lw=2)
        ax.plot([d], [i], "o", color=color, ms=5)
        if not math.isnan(c.margin):
            m = c.margin / scale
            ax.plot([-m, m], [i, i], "|", color="#90a4ae", ms=8)
        labels.append(_mpl(f"{c.cohort} · {c.metric}"))
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(labels)
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("candidate − baseline" + (" (share of baseline)" if relative else "") +
                  "; bars: 95% CI; ticks: ±margin; red = regression, green = improvement, amber = inconclusive")
    ax.set_title(_mpl(title))
    return _svg(fig, title)


def cdf_plot(report: Report) -> str:
    if not report.latency_cdf:
        return "<p>No latencies recorded.</p>"
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for route, d in report.latency_cdf.items():
        ax.step(d["latency_s"], d["p"], where="post", label=_mpl(route + (" (baseline)" if route == report.baseline else "")))
    ax.set_xlabel("end-to-end latency (s), successful calls")
    ax.set_ylabel("share of calls ≤ x")
    if all(min(d["latency_s"]) > 0 for d in report.latency_cdf.values()):
        ax.set_xscale("log")
    ax.axhline(0.99, color="#999", lw=0.6, ls="--")
    ax.legend()
    ax.set_title("Latency CDF per route")
    return _svg(fig, "cdf")


def cost_quality_plot(report: Report) -> str:
    cost = {r["route"]: r.get("cost_per_trace_usd") for r in report.serving if r["scope"] == "overall"}
    overall = [c for c in report.comparisons if c.scope == "overall" and c.kind == "quality"]
    if not overall:
        return "<p>No quality scores to plot.</p>"
    fig, ax = plt.subplots(figsize=(7, 3.6))
    markers = "osD^v<>ph"
    for j, metric in enumerate(sorted({c.metric for c in overall})):
        pts = {}
        for c in overall:
            if c.metric == metric:
                pts[report.baseline] = c.baseline
                pts[c.candidate] = c.candidate_value
        xs = [cost.get(r) or 0.0 for r in pts]
        ax.plot(xs, list(pts.values()), markers[j % len(markers)] + "-", label=_mpl(metric), alpha=0.8)
        for r, x, y in zip(pts, xs, pts.values()):
            ax.annotate(_mpl(r), (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.set_xlabel("cost per trace (USD, route prices)")
    ax.set_ylabel("mean over prompts")
    ax.legend(fontsize=7)
    ax.set_title("Cost versus quality (all cohorts)")
    return _svg(fig, "costq")


def _expert_groups(report: Report) -> dict[str, list[dict]]:
    """route -> its cohort rows (without "(all)"), in report order: each cohort's sources next to each other."""
    groups: dict[str, list[dict]] = {}
    for p in report.experts:
        if p["cohort"] != "(all)":
            groups.setdefault(p["route"], []).append(p)
    return groups


def _sources(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(p["source"] for p in rows))


def expert_heatmaps(route: str, rows: list[dict]) -> str:
    """Cohort x expert utilisation, one panel per MoE layer, a cohort's sources (live, probe) on adjacent
    rows: a cohort that crowds a few experts shows as hot cells, and two sources that disagree as unequal rows."""
    sources = _sources(rows)
    layers = len(rows[0]["utilization"])
    fig, axes = plt.subplots(1, layers, figsize=(min(3.2 * layers, 12), 0.35 * len(rows) + 1.4), squeeze=False)
    vmax = max(max(u) for p in rows for u in p["utilization"])
    labels = [_mpl(p["cohort"] if len(sources) == 1 else f"{p['cohort']} ({p['source']})") for p in rows]
    for li, ax in enumerate(axes[0]):
        grid = [p["utilization"][li] for p in rows]
        im = ax.imshow(grid, aspect="auto", cmap="viridis", vmin=0, vmax=vmax)
        ax.set_title(f"layer {li}")
        ax.set_xlabel("expert")
        ax.set_yticks(range(len(rows)))
        ax.set_yticklabels(labels if li == 0 else [])
        for y in range(len(rows) - 1):  # a rule between cohorts, not between a cohort's sources
            if rows[y]["cohort"] != rows[y + 1]["cohort"] and len(sources) > 1:
                ax.axhline(y + 0.5, color="white", linewidth=1.5)
    fig.colorbar(im, ax=axes[0].tolist(), label="share of assignments")
    fig.suptitle(_mpl(f"{route} ({', '.join(sources)}): expert utilisation per cohort"))
    return _svg(fig, f"heat-{route}")


LINESTYLES = {"live": "-", "returned": "-.", "probe": "--"}


def overflow_curve(route: str, rows: list[dict]) -> str:
    """Simulated assignment overflow against the capacity factor: one colour per cohort, one line style per source."""
    sources = _sources(rows)
    fig, ax = plt.subplots(figsize=(6, 3.4))
    colours: dict[str, str] = {}
    for p in rows:
        fs = p["capacity_factors"]
        colour = colours.setdefault(p["cohort"], f"C{len(colours) % 10}")
        ax.plot(fs, [p["metrics"].get(f"assignment_overflow_rate@{factor_key(f)}") or 0.0 for f in fs],
                marker="o" if p["source"] == sources[0] else "x", linestyle=LINESTYLES.get(p["source"], ":"), color=colour,
                label=_mpl(p["cohort"] if len(sources) == 1 else f"{p['cohort']} ({p['source']})"))
    ax.set_xlabel("capacity factor")
    ax.set_ylabel("assignment overflow rate (what-if)")
    ax.legend(fontsize=7)
    ax.set_title(_mpl(f"{route} ({', '.join(sources)}): overflow versus capacity factor"))
    return _svg(fig, f"cap-{route}")


def expert_section(report: Report) -> str:
    if not report.experts:
        return ('<h2>Expert telemetry</h2><section id="expert-telemetry"><p class="muted">No expert routing recorded '
                "for this run: run <code>routecheck experts RUN --probe</code> (offline probe of the MoE checkpoint) or "
                "mirror with <code>expert_capture: true</code> (docs/experts.md).</p></section>")
    parts = ['<h2>Expert telemetry</h2><section id="expert-telemetry">', f'<p class="muted">{esc(IMBALANCE_NOTE)}</p>']
    for cand in report.candidates:
        notes = expert_notes(report, cand)
        if notes:
            parts.append(f"<p>Beside the regressions of {esc(cand)}:</p><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    parts.append(_table(EXPERT_HEADER, expert_rows(report), "expert-table"))
    agree = expert_agreement(report)
    if agree:
        parts.append('<ul class="expert-agreement">' + "".join(f"<li>{esc(a)}</li>" for a in agree) + "</ul>")
    for route, rows in _expert_groups(report).items():
        parts.append(f'<div class="expert-heatmap">{expert_heatmaps(route, rows)}</div>')
        if rows[0]["capacity_factors"]:
            parts.append(f'<div class="overflow-curve">{overflow_curve(route, rows)}</div>')
    parts.append("</section>")
    return "".join(parts)


def _table(header: list[str], rows: list[list[str]], table_id: str, raw: bool = False) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c if raw else esc(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f'<table id="{esc(table_id)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _comparison_table(rows: list[Comparison], table_id: str) -> str:
    out = []
    for c in rows:
        out.append([esc(c.cohort), esc(c.metric), str(c.n_prompts), fnum(c.baseline), fnum(c.candidate_value),
                    esc(diff_text(c)), fp(c.p_adjusted), f'<span class="v-{c.verdict.replace(" ", "-")}">{esc(c.verdict)}</span>',
                    esc(c.note)])
    return _table(HEADER, out, table_id, raw=True)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.6em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;font-size:12px;margin:8px 0}td,th{border:1px solid #ddd;padding:3px 6px;vertical-align:top}
th{background:#f5f5f5;text-align:left}.v-regression{color:#c62828;font-weight:bold}.v-improvement{color:#2e7d32}
.v-inconclusive{color:#a67c00}.v-no-change{color:#757575}.v-insufficient{color:#a67c00;font-style:italic}.fail{color:#c62828}.pass{color:#2e7d32}
pre{white-space:pre-wrap;word-break:break-word;max-width:420px;max-height:220px;overflow:auto;margin:0;font-size:11px}
.muted{color:#666;font-size:12px}.note{color:#444;font-size:13px;border-left:3px solid #bbb;padding-left:6px}svg{max-width:100%;height:auto}
"""


def to_html(report: Report) -> str:
    s = report.settings
    verdict = outcome(report)
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             # No network: forbid every fetch and every script, even if something slipped through escaping.
             "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; style-src 'unsafe-inline'; img-src data:\">",
             f"<title>routecheck report {esc(report.run_id)}</title><style>{CSS}</style></head><body>"]
    parts.append(f"<h1>routecheck report — run {esc(report.run_id)}</h1>")
    parts.append(f'<p id="headline" class="{"pass" if verdict == "PASS" else "fail"}"><b>{verdict}</b> — {esc(headline(report))}</p>')
    parts.append(f'<p class="muted">Baseline <b>{esc(report.baseline)}</b>; candidates {esc(", ".join(report.candidates))}. '
                 f"alpha {esc(s['alpha'])}; {esc(s['correction'])}; {esc(s['families'])}. Unit: {esc(s['unit'])}. "
                 f"Verdict: {esc(s['verdict_rule'])}. Generated {esc(report.generated_at)}.</p>")
    parts += [f'<p class="note">{esc(note)}</p>' for note in report.notes]
    parts.append('<h2>Per-cohort differences (forest plot)</h2><div id="forest-plot">')
    for cand in report.candidates:
        rows = [c for c in report.comparisons if c.candidate == cand and c.kind == "quality"]
        rows.sort(key=lambda c: (c.metric, c.scope != "overall", c.cohort))
        parts.append(forest_plot(rows, f"{cand} vs {report.baseline}: quality"))
        srows = [c for c in report.comparisons if c.candidate == cand and c.kind == "serving"]
        srows.sort(key=lambda c: (c.metric, c.scope != "overall", c.cohort))
        parts.append(forest_plot(srows, f"{cand} vs {report.baseline}: serving (relative)", relative=True))
    parts.append("</div>")
    for cand in report.candidates:
        rows = sorted([c for c in report.comparisons if c.candidate == cand],
                      key=lambda c: (c.kind != "quality", c.metric, c.scope != "overall", c.cohort))
        parts.append(f"<h2>{esc(cand)} vs {esc(report.baseline)}: all comparisons</h2>")
        parts.append(_comparison_table(rows, f"comparisons-{cand}"))
    parts.append('<h2>Serving</h2><div id="latency-cdf">' + cdf_plot(report) + "</div>")
    cols = SERVING_COLUMNS + PHASE_COLUMNS
    srows = serving_rows(report, overall_only=False)
    parts.append(_table(["route", "cohort", "n"] + [l for _, l in cols],
                        [[r["route"], r["cohort"], str(r["responses"])] + [fnum(r.get(k)) for k, _ in cols] for r in srows],
                        "serving-table"))
    if report.server_metrics:
        parts.append("<h3>vLLM server metrics (Prometheus; counters: after − before, gauges: peak during run)</h3>")
        parts.append(_table(["route", "metric", "before", "after", "delta", "peak during"],
                            [[m["route"], m["metric"], fnum(m.get("before")), fnum(m.get("after")), fnum(m.get("delta")),
                              fnum(m.get("peak_during"))] for m in report.server_metrics], "server-metrics"))
    else:
        parts.append('<p class="muted">No vLLM /metrics samples recorded for this run.</p>')
    if report.trajectories:
        parts.append("<h2>Agent trajectories</h2><p class=\"muted\">Per cohort: steps taken, why trajectories stopped, "
                     "mean step accuracy, and tokens and cost per trace summed over the steps.</p>")
        parts.append(_table(TRAJECTORY_HEADER, trajectory_rows(report), "trajectories"))
    parts.append('<h2>Cost versus quality</h2><div id="cost-quality">' + cost_quality_plot(report) + "</div>")
    parts.append('<h2>Worst examples in regressed cohorts</h2>')
    if report.worst_examples:
        parts.append(_table(["candidate", "cohort", "metric", "prompt", "baseline", "candidate", "prompt text",
                             "baseline response", "candidate response"],
                            [[esc(w.candidate), esc(w.cohort), esc(w.metric), esc(w.prompt_id), fnum(w.baseline_value),
                              fnum(w.candidate_value), _pre(w.prompt_text), _pre(w.baseline_text), _pre(w.candidate_text)] for w in report.worst_examples],
                            "worst-examples", raw=True))
    else:
        parts.append('<p class="muted" id="worst-examples">No quality regression, so no examples.</p>')
    if report.discovery:
        d = report.discovery
        parts.append("<h2>Exploratory cohorts (not pre-registered)</h2>")
        parts.append(f"<p class=\"muted\">{esc(d.reason)}. {esc(d.method)}; chosen k = {d.k} "
                     f"(silhouette: {esc(', '.join(f'k={k}: {v:.3f}' for k, v in d.silhouette.items()))}). "
                     f"{esc(d.correction)}. These findings are hypotheses for a pre-registered cohort, not verdicts.</p>")
        parts.append(_table(["cluster", "prompts", "top terms"],
                            [[c["label"], str(c["prompts"]), ", ".join(c["top_terms"])] for c in d.clusters], "clusters"))
        parts.append(_comparison_table(d.comparisons, "discovered-comparisons"))
        parts.append(f"<h3>Worst slices ({d.slices_searched} searched)</h3>")
        parts.append(_comparison_table(d.worst_slices, "worst-slices"))
    parts.append(expert_section(report))
    if report.warnings:
        parts.append("<h2>Warnings</h2><ul>" + "".join(f"<li>{esc(w)}</li>" for w in report.warnings) + "</ul>")
    parts.append(f'<h2>Method</h2><ul class="muted">' + "".join(
        f"<li><b>{esc(k)}</b>: {esc(v)}</li>" for k, v in s.items() if k not in ("policy", "margins")) + "</ul>")
    parts.append("</body></html>")
    return "\n".join(parts)
