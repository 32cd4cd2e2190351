"""report.html in a real browser: headless Chromium loads it offline and renders tables and plots."""

import shutil
import subprocess

import pytest

from export.report.build import write_report
from tests.export.report.test_report import make_report

CHROMIUM = next(
    (shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome") if shutil.which(name)), None
)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed")]


def chromium(*args) -> subprocess.CompletedProcess:
    command = [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120)


def test_html_report_renders_its_tables_and_plots_offline(tmp_path):
    write_report(tmp_path, make_report())
    url = (tmp_path / "report.html").as_uri()
    dom = chromium("--dump-dom", url).stdout
    assert dom.count("<table>") == 4  # stages, artifacts, latency, providers (no quantized or ORT artifact)
    assert dom.count('<img alt="') == 3 and "Recommended artifact" in dom
    shot = tmp_path / "shot.png"
    chromium("--window-size=1280,3000", f"--screenshot={shot}", url)
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[:2] == (3000, 1280)
    ink = (pixels[..., :3].mean(axis=2) < 0.9).mean()  # share of pixels that are not near-white
    assert ink > 0.03, f"the page rendered almost blank ({ink:.1%} ink)"
