"""A real browser (Debian's chromium via pip playwright) in a real JupyterLab: run a notebook
that triggers a client tool call, fill the form, click Send, and see the agent use the value."""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from emulator_process import free_port

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def _require_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    message = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); .ci/run does"
    if os.environ.get("CI") == "true":
        pytest.fail(message)  # CI must run this test, never skip it
    pytest.skip(message)


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
    token, port = secrets.token_hex(16), free_port()
    env = {**os.environ, "CES_NB_EMULATOR": emulator.address, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"),
           "JUPYTER_RUNTIME_DIR": str(tmp_path / "runtime"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={tmp_path}", "--ServerApp.disable_check_xsrf=True",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"jupyter lab exited: {proc.stdout.read()}")
            time.sleep(0.3)
    else:
        proc.kill()
        pytest.fail("jupyter lab did not start in 90 s")
    yield f"{base}/lab/tree/book.ipynb?token={token}"
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.mark.slow
@pytest.mark.timeout(300)  # JupyterLab, a kernel and chromium start: about 30 s here
def test_fill_the_form_and_send_in_a_real_jupyterlab(lab, tmp_path):
    _require_chromium()
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
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
            seat.fill("22K")
            page.locator(".ces-field-confirmed input[type=checkbox]").check()
            page.locator(".jupyter-widgets.widget-button", has_text="Send").click()

            expect(page.locator(".jp-OutputArea-output", has_text="You're in seat 22K").first).to_be_visible(timeout=60_000)
        finally:
            page.screenshot(path=str(tmp_path / "tool-form.png"), full_page=True)
            browser.close()
    assert (tmp_path / "tool-form.png").stat().st_size > 10_000
    shutil.copy(tmp_path / "tool-form.png", tmp_path / "tool-form-final.png")
