"""Report outputs: terminal, Markdown, JSON, JUnit and HTML, each a function of the Report.

    RENDERERS (below)  the file formats `routecheck report --formats` writes
    text.py            terminal tables and Markdown (and the number formats every output shares)
    html.py            the self-contained HTML page
    junit.py           JUnit XML (shared with the gate)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from rich.console import Console

from harness.report.model import Report

@dataclass(frozen=True)
class Renderer:
    """One output format: the file it writes (`report<suffix>`) and how (`render(report, paths)`,
    where `paths` holds the files written before it, so Markdown can link the HTML page)."""

    suffix: str
    render: Callable[[Report, dict[str, Path]], str]


def _html(report: Report, paths: dict[str, Path]) -> str:
    from harness.report.render.html import to_html

    return to_html(report)


def _markdown(report: Report, paths: dict[str, Path]) -> str:
    from harness.report.render.text import to_markdown

    return to_markdown(report, paths["html"].name if "html" in paths else "report.html")


def _json(report: Report, paths: dict[str, Path]) -> str:
    return json.dumps(report.to_dict(), indent=2, ensure_ascii=False)


def _junit(report: Report, paths: dict[str, Path]) -> str:
    from harness.report.render.text import to_junit

    return to_junit(report)


# The report's file outputs, in the order they are written. A new format: a function and one line here.
RENDERERS: dict[str, Renderer] = {
    "html": Renderer(".html", _html),
    "md": Renderer(".md", _markdown),
    "json": Renderer(".json", _json),
    "junit": Renderer(".junit.xml", _junit),
}
FORMATS = tuple(RENDERERS)


def write_outputs(report: Report, out_dir: Path, formats: tuple[str, ...] = FORMATS, stem: str = "report") -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, renderer in RENDERERS.items():
        if name in formats:
            path = out_dir / f"{stem}{renderer.suffix}"
            path.write_text(renderer.render(report, paths), encoding="utf-8")
            paths[name] = path
    return paths


def default_out_dir(run_id: str) -> Path:
    """reports/RUN/, with the run id made a safe single path component (it comes from the store)."""
    from harness.report.render.escape import filename

    return Path("reports") / filename(run_id)


def print_terminal_report(db_path: Path | str, run_id: str, console: Console | None = None,
                          html_path: str | None = None) -> Report:
    """For the end of `routecheck mirror`/the main job: the terminal table of a run."""
    from harness.report.render.text import print_report

    from harness.report.build import make_report  # scipy and pandas: not for callers that only escape text

    report = make_report(db_path, run_id)
    print_report(report, console, html_path)
    return report


def write_report_files(db_path: Path | str, run_id: str, out_dir: Path | str | None = None) -> dict[str, Path]:
    """Markdown, JSON, JUnit and HTML of a run into out_dir (default reports/RUN/); returns their paths."""
    from harness.report.build import make_report

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
