"""A real JupyterLab on a free loopback port for the browser tests, and Debian's chromium."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
import tempfile
import time
import json
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest

from emulator_process import free_port

CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]


def require_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    message = f"{CHROMIUM} is missing: install Debian's chromium (apt-get install chromium); .ci/run does"
    if os.environ.get("CI") == "true":
        pytest.fail(message)  # CI must run this test, never skip it
    pytest.skip(message)


def screenshots(tmp_path: Path) -> Path:
    """Where browser tests leave their screenshots: $CES_NB_SCREENSHOTS, else the test's tmp_path."""
    folder = Path(os.environ.get("CES_NB_SCREENSHOTS") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def lab_env(home: Path, emulator_address: str) -> dict[str, str]:
    """Private Jupyter dirs: its own config, runtime, workspaces, settings, and its own trust
    database (JUPYTER_DATA_DIR), so a notebook is untrusted until this environment trusts it.

    Notebook windowing is off: JupyterLab 4 otherwise renders only the cells near the viewport,
    so how many outputs a test finds would depend on timing and window size."""
    settings = home / "settings"
    tracker = settings / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    tracker.parent.mkdir(parents=True, exist_ok=True)
    tracker.write_text(json.dumps({"windowingMode": "none"}))
    return {**os.environ, "CES_NB_EMULATOR": emulator_address, "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
            "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTER_DATA_DIR": str(home / "data")}


@contextmanager
def jupyterlab(root: Path, env: dict[str, str]):
    """Yields (base URL, token) of a JupyterLab serving `root`."""
    token, port = secrets.token_hex(16), free_port()
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--ServerApp.port={port}", "--ServerApp.ip=127.0.0.1",
           f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.disable_check_xsrf=True",
           "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    # Its log goes to a file: a pipe nobody reads would fill and block JupyterLab.
    log = tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    try:
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=2):
                    break
            except OSError:
                if proc.poll() is not None:
                    log.seek(0)
                    pytest.fail(f"jupyter lab exited: {log.read()[-3000:]}")
                time.sleep(0.3)
        else:
            pytest.fail("jupyter lab did not start in 90 s")
        yield base, token
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
