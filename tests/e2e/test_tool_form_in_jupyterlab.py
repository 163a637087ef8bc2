"""A real browser (Debian's chromium via pip playwright) in a real JupyterLab: run a notebook
that triggers a client tool call, fill the form, click Send, and see the agent use the value."""

from __future__ import annotations

import re

import nbformat
import pytest

from lab_process import CHROMIUM, CHROMIUM_ARGS, jupyterlab, lab_env, require_chromium, screenshots


@pytest.fixture
def lab(tmp_path, emulator):
    """JupyterLab on a free loopback port, its kernels pointed at the test emulator."""
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [
        nbformat.v4.new_code_cell("%load_ext ces_nb"),
        nbformat.v4.new_code_cell("%ces I'd like to book a seat on flight SW123"),
    ]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"}
    nbformat.write(notebook, tmp_path / "book.ipynb")
    with jupyterlab(tmp_path, lab_env(tmp_path, emulator.address)) as (base, token):
        yield f"{base}/lab/tree/book.ipynb?token={token}"


@pytest.mark.slow
@pytest.mark.timeout(300)  # JupyterLab, a kernel and chromium start: about 30 s here
def test_fill_the_form_and_send_in_a_real_jupyterlab(lab, tmp_path):
    require_chromium()
    from playwright.sync_api import expect, sync_playwright

    shots = screenshots(tmp_path)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1240, "height": 1000})  # a notebook cell about 800 px wide
        try:
            page.goto(lab)
            status = page.locator("#jp-main-statusbar")
            expect(status).to_contain_text("Idle", timeout=120_000)
            page.locator(".jp-Notebook").first.click()
            page.get_by_role("menuitem", name="Run", exact=True).click()
            page.get_by_role("menuitem", name=re.compile(r"^Run All Cells")).click()

            seat = page.locator(".ces-field-seat input")
            expect(seat).to_be_visible(timeout=120_000)
            expect(page.locator(".ces-tools").first).to_contain_text("select_seat")
            form = page.locator(".ces-form").first
            form.scroll_into_view_if_needed()
            # The form fits its cell: nothing sticks out of the output area, nothing scrolls sideways.
            area = form.locator("xpath=ancestor::div[contains(@class, 'jp-OutputArea-output')][1]").bounding_box()
            assert area["width"] >= 780, area
            for part in (form, form.locator(".widget-tab").first, form.locator(".ces-form-line").first, seat):
                box = part.bounding_box()
                assert box is not None and box["x"] + box["width"] <= area["x"] + area["width"] + 1, (box, area)
            assert form.evaluate("e => e.scrollWidth <= e.clientWidth + 1")
            head = form.locator(".ces-form-head").first.inner_text()
            assert head.count("select_seat") == 1
            assert not form.locator(".ces-form-wide").first.is_visible()  # the args: in the table above, not again here
            page.screenshot(path=str(shots / "tool-form.png"))
            seat.fill("22K")
            page.locator(".ces-field-confirmed input[type=checkbox]").check()
            page.locator(".jupyter-widgets.widget-button", has_text="Send").click()

            expect(page.locator(".jp-OutputArea-output", has_text="You're in seat 22K").first).to_be_visible(timeout=60_000)
            expect(page.locator(".jupyter-widgets.widget-button", has_text="Send").first).to_be_disabled()
            expect(seat).to_be_disabled()
        finally:
            page.screenshot(path=str(shots / "tool-form-sent.png"), full_page=True)
            browser.close()
    assert (shots / "tool-form.png").stat().st_size > 10_000
