"""The HTML report rendered by a real browser (headless Chromium): the content is there, the
untrusted strings stay text, and a screenshot is produced. Skipped when Chromium is not installed."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from edray.report.job import write_report
from tests.fixtures.evaluate import HOSTILE

CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed")


def _chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
        f"--user-data-dir={tmp_path / 'profile'}", *args,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)


@pytest.fixture(scope="module")
def report_file(report_run_dir, tmp_path_factory) -> Path:
    return write_report(report_run_dir, tmp_path_factory.mktemp("report-out"))


def test_browser_renders_every_section(report_file, tmp_path):
    done = _chromium(tmp_path, "--dump-dom", report_file.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    dom = done.stdout
    for title in ("Capability gaps", "Before / after per task", "Before / after per skill", "Baselines side by side",
                  "Retention vs. target gain", "Training", "Errors"):  # fmt: skip
        assert f"<h2>{title}</h2>" in dom.replace("&amp;", "&"), title
    # The hostile model output was parsed as text: no script or injected image element exists.
    assert "<script" not in dom and '<img src="x"' not in dom
    assert "&lt;script&gt;" in dom
    # Charts and world images decoded into <img> elements with inline data.
    assert len(re.findall(r'<img class="chart"', dom)) >= 6
    assert len(re.findall(r'<img class="(?:big|thumb)"', dom)) >= 7
    assert dom.count('class="located"') == 3
    assert HOSTILE not in dom


def test_browser_screenshot(report_file, tmp_path):
    shot = tmp_path / "report.png"
    done = _chromium(tmp_path, "--window-size=1280,4000", f"--screenshot={shot}", report_file.as_uri())
    assert done.returncode == 0, done.stderr[-2000:]
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1280, 4000)
        # A rendered page, not a blank one: many distinct colours (charts, images, text).
        assert len(img.convert("RGB").getcolors(maxcolors=1 << 20) or []) > 50
