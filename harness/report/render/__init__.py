"""Report outputs: terminal, Markdown, JSON, JUnit and HTML, each a function of the Report.

    text.py  terminal tables and Markdown (and the number formats every output shares)
    html.py  the self-contained HTML page
"""

from __future__ import annotations

import json
from pathlib import Path

from rich.console import Console

from harness.report.build import make_report
from harness.report.model import Report

FORMATS = ("md", "json", "junit", "html")


def write_outputs(report: Report, out_dir: Path, formats: tuple[str, ...] = FORMATS, stem: str = "report") -> dict[str, Path]:
    from harness.report.render.text import to_junit, to_markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if "html" in formats:
        from harness.report.render.html import to_html

        paths["html"] = out_dir / f"{stem}.html"
        paths["html"].write_text(to_html(report), encoding="utf-8")
    if "md" in formats:
        paths["md"] = out_dir / f"{stem}.md"
        paths["md"].write_text(to_markdown(report, paths.get("html", Path(f"{stem}.html")).name), encoding="utf-8")
    if "json" in formats:
        paths["json"] = out_dir / f"{stem}.json"
        paths["json"].write_text(json.dumps(report.to_dict(), indent=2, ensure_ascii=False), encoding="utf-8")
    if "junit" in formats:
        paths["junit"] = out_dir / f"{stem}.junit.xml"
        paths["junit"].write_text(to_junit(report), encoding="utf-8")
    return paths


def default_out_dir(run_id: str) -> Path:
    return Path("reports") / run_id


def print_terminal_report(db_path: Path | str, run_id: str, console: Console | None = None,
                          html_path: str | None = None) -> Report:
    """For the end of `routecheck mirror`/the main job: the terminal table of a run."""
    from harness.report.render.text import print_report

    report = make_report(db_path, run_id)
    print_report(report, console, html_path)
    return report


def write_report_files(db_path: Path | str, run_id: str, out_dir: Path | str | None = None) -> dict[str, Path]:
    """Markdown, JSON, JUnit and HTML of a run into out_dir (default reports/RUN/); returns their paths."""
    report = make_report(db_path, run_id)
    return write_outputs(report, Path(out_dir) if out_dir else default_out_dir(report.run_id))


def parse_formats(formats: str) -> tuple[str, ...]:
    """`md,json` -> ("md", "json"); unknown names are a config error naming the choices."""
    from harness.config import ConfigError

    chosen = tuple(f.strip() for f in formats.split(",") if f.strip())
    bad = [f for f in chosen if f not in FORMATS]
    if bad:
        raise ConfigError(f"--formats: unknown format(s) {', '.join(bad)}; choose from {', '.join(FORMATS)}")
    return chosen
