"""The HTML report in headless Chromium: it renders (screenshot, DOM) and model text stays text."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness.report.render import write_report_files
from harness.testing.synthetic import deterministic_store

pytestmark = pytest.mark.browser

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
EVIL = '<script>document.title="PWNED"</script><img src=x onerror="document.title=\'PWNED2\'">'
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile-{len(list(tmp_path.glob('profile-*')))}"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed (apt-get install -y chromium)")
def test_html_report_renders_in_chromium_and_escapes_model_text(tmp_path):
    db = deterministic_store(tmp_path / "s.duckdb", failing={"sql": 20}, failing_text=EVIL, slow_cohort="legal")
    html = write_report_files(db, "run-hand", tmp_path / "out")["html"]
    url = html.resolve().as_uri()

    shot = tmp_path / "report.png"
    res = _chromium(tmp_path, "--window-size=1280,2000", f"--screenshot={shot}", url)
    print(f"screenshot: {shot}")
    assert shot.exists(), res.stderr[-2000:]
    import matplotlib.image as mpimg

    pixels = mpimg.imread(shot)
    assert pixels.shape[0] >= 1000 and pixels.std() > 0.05, "screenshot is blank"

    res = _chromium(tmp_path, "--dump-dom", url)
    dom = res.stdout
    assert dom, res.stderr[-2000:]
    # No injected script ran: the title is ours, and no <img> element came from the response text.
    assert re.search(r"<title>routecheck report run-hand</title>", dom)
    assert "PWNED" not in dom.split("<body")[0]
    assert "<img" not in dom
    # The response shows as text in the worst-examples table.
    assert "&lt;script&gt;document.title=\"PWNED\"&lt;/script&gt;" in dom
    worst = dom[dom.index('id="worst-examples"'):]
    assert worst.count("<tr>") >= 2 and "sql" in worst
    # The forest plot and the tables rendered.
    forest = dom[dom.index('id="forest-plot"'):dom.index("</div>", dom.index('id="forest-plot"'))]
    assert forest.count("<svg") >= 1 and "sql · task_completion.pass_rate" in forest
    assert re.search(r'<table id="comparisons-moe">.*?<td>sql</td>', dom, re.S)
    assert 'class="v-regression"' in dom and 'id="serving-table"' in dom and "<svg" in dom[dom.index('id="latency-cdf"'):]
