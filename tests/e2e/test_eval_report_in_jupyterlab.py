"""Notebook 07's evaluation report in a real JupyterLab (trusted, light and dark theme, 800 and
1280 px wide): JupyterLab's own rendered-HTML rules (right-aligned cells, zebra rows) must lose
to the report's, so cells read left-aligned and a failed row is tinted unlike a passed one."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from lab_process import CHROMIUM, CHROMIUM_ARGS, jupyterlab, lab_env, require_chromium, screenshots

EVALUATE = Path(__file__).resolve().parents[2] / "notebooks" / "07-evaluate.ipynb"
THEMES = {"light": "JupyterLab Light", "dark": "JupyterLab Dark"}


def _set_theme(base: str, token: str, theme: str) -> None:
    """Through JupyterLab's settings API, as its Settings menu does: the next page opens in it."""
    request = urllib.request.Request(f"{base}/lab/api/settings/@jupyterlab/apputils-extension:themes?token={token}",
                                     data=json.dumps({"raw": json.dumps({"theme": theme})}).encode(), method="PUT",
                                     headers={"Content-Type": "application/json"})
    urllib.request.urlopen(request, timeout=30).close()


@pytest.mark.slow
@pytest.mark.timeout(400)  # JupyterLab and chromium start once, the notebook opens four times: about 30 s here
def test_the_report_wins_over_jupyterlab_styles(tmp_path, emulator):
    require_chromium()
    from playwright.sync_api import sync_playwright

    root = tmp_path / "nb"
    root.mkdir()
    shutil.copy(EVALUATE, root / "evaluate.ipynb")
    env = lab_env(tmp_path, emulator.address)
    subprocess.run([sys.executable, "-m", "jupyter", "trust", str(root / "evaluate.ipynb")], env=env, check=True, capture_output=True)
    shots = screenshots(tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            with jupyterlab(root, env) as (base, token):
                for theme in sorted(THEMES):
                    _set_theme(base, token, THEMES[theme])
                    for width in (1280, 800):
                        page = browser.new_page(viewport={"width": width, "height": 1000})
                        page.goto(f"{base}/lab/tree/evaluate.ipynb?token={token}")
                        _check_report(page, theme, width)
                        page.screenshot(path=str(shots / f"eval-report-{theme}-{width}.png"))
                        page.close()
        finally:
            browser.close()


def _check_report(page, theme: str, width: int) -> None:
    """The open report reads left-aligned, in the theme, with its failed row tinted."""
    from playwright.sync_api import expect

    failed = page.locator(".jp-OutputArea-output tr.ces-eval-row-fail").first
    expect(failed).to_be_attached(timeout=120_000)
    assert page.evaluate("document.body.dataset.jpThemeLight") == ("true" if theme == "light" else "false"), theme
    failed.scroll_into_view_if_needed()
    card = failed.locator("xpath=ancestor::table[1]")
    passed = card.locator("tbody tr:not(.ces-eval-row-fail)").first
    cell = failed.locator("td").nth(2)
    assert cell.evaluate("e => getComputedStyle(e).textAlign") in ("left", "start")
    assert passed.locator("td").first.evaluate("e => getComputedStyle(e).textAlign") in ("left", "start")
    tint = failed.evaluate("e => getComputedStyle(e).backgroundColor")
    plain = passed.evaluate("e => getComputedStyle(e).backgroundColor")
    assert tint != plain and tint not in ("rgba(0, 0, 0, 0)", "transparent"), (theme, width, tint, plain)
    # the expected/observed cells are wide enough to read: not a few letters a line
    assert cell.evaluate("e => e.getBoundingClientRect().width") > 120
