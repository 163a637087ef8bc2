"""A freshly cloned (untrusted) tutorial in a real JupyterLab: JupyterLab strips the cards'
<style>, and the plain-text fallback must still stay hidden (its `hidden` attribute survives
the sanitizer); once trusted, the stylesheet applies."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lab_process import CHROMIUM, CHROMIUM_ARGS, jupyterlab, lab_env, require_chromium, screenshots

QUICKSTART = Path(__file__).resolve().parents[2] / "notebooks" / "01-quickstart.ipynb"


def _cards_in(notebook: Path) -> int:
    """How many turn cards the committed notebook's outputs hold."""
    cells = json.loads(notebook.read_text())["cells"]
    html = ("".join(o.get("data", {}).get("text/html", "")) for c in cells for o in c.get("outputs", []))
    return sum(len(re.findall(r'<div class="ces-root', h)) for h in html)


def _open(page, url: str):
    from playwright.sync_api import expect

    page.goto(url)
    expect(page.locator(".ces-root").first).to_be_attached(timeout=120_000)
    return page


@pytest.mark.slow
@pytest.mark.timeout(300)  # JupyterLab and chromium start, the notebook opens twice: about 20 s here
def test_untrusted_quickstart_hides_the_fallback_and_trusted_gets_the_styles(tmp_path, emulator):
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    cards = _cards_in(QUICKSTART)
    assert cards >= 5, "the quickstart's committed outputs lost their cards"
    root = tmp_path / "nb"
    root.mkdir()
    shutil.copy(QUICKSTART, root / "quickstart.ipynb")
    env = lab_env(tmp_path, emulator.address)
    SHOTS = screenshots(tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            with jupyterlab(root, env) as (base, token):
                url = f"{base}/lab/tree/quickstart.ipynb?token={token}"
                page = _open(browser.new_page(viewport={"width": 1200, "height": 1000}), url)
                roots = page.locator(".jp-OutputArea-output .ces-root")
                expect(roots).to_have_count(cards, timeout=60_000)  # outputs attach cell by cell
                # Untrusted: JupyterLab dropped the <style>; the fallback <pre> is there but hidden.
                assert page.locator(".jp-OutputArea-output .ces-root style").count() == 0
                fallbacks = page.locator(".jp-OutputArea-output pre.ces-fallback")
                assert fallbacks.count() == cards
                assert all(not fallbacks.nth(i).is_visible() for i in range(fallbacks.count()))
                hello = roots.nth(1).inner_text()  # the first turn's card: the card, not the plain text above it
                assert hello.startswith("Turn 1") and "(completed)" not in hello and "user:" not in hello, hello
                page.locator(".jp-OutputArea-output .ces-root").nth(1).scroll_into_view_if_needed()
                page.screenshot(path=str(SHOTS / "quickstart-untrusted.png"))
                page.close()
                # `jupyter trust`, then open it again: the server reads its signature database on
                # every open, so no restart is needed.
                subprocess.run([sys.executable, "-m", "jupyter", "trust", str(root / "quickstart.ipynb")], env=env, check=True,
                               capture_output=True)
                page = _open(browser.new_page(viewport={"width": 1200, "height": 1000}), url)
                assert page.locator(".jp-OutputArea-output .ces-root style").count() >= 1
                turn = page.locator(".jp-OutputArea-output .ces-turn").first
                assert turn.evaluate("e => getComputedStyle(e).borderTopStyle") == "solid"  # the stylesheet applies
                assert not page.locator(".jp-OutputArea-output pre.ces-fallback").first.is_visible()
                page.locator(".jp-OutputArea-output .ces-root").nth(1).scroll_into_view_if_needed()
                page.screenshot(path=str(SHOTS / "quickstart-trusted.png"))
        finally:
            browser.close()


DIAGNOSTICS = QUICKSTART.parent / "04-diagnostics.ipynb"


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_committed_plots_show_as_images_in_an_untrusted_notebook(tmp_path, emulator):
    """No kernel, no %matplotlib, not trusted: the committed PNGs are what a visitor sees."""
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    root = tmp_path / "nb"
    root.mkdir()
    shutil.copy(DIAGNOSTICS, root / "diagnostics.ipynb")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            with jupyterlab(root, lab_env(tmp_path, emulator.address)) as (base, token):
                page = browser.new_page(viewport={"width": 1200, "height": 1000})
                page.goto(f"{base}/lab/tree/diagnostics.ipynb?token={token}")
                images = page.locator(".jp-OutputArea-output img")
                expect(images.first).to_be_attached(timeout=120_000)
                expect(images.nth(1)).to_be_attached(timeout=60_000)  # both plots; the second renders a moment later
                first = images.first
                first.scroll_into_view_if_needed()
                expect(first).to_be_visible()
                assert first.evaluate("e => e.complete && e.naturalWidth") >= 800  # a decoded 900 px-wide PNG
                page.screenshot(path=str(screenshots(tmp_path) / "plot-spans.png"))
        finally:
            browser.close()
