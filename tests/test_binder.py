"""Binder: repo2docker must build from binder/, and the emulated build
(fresh venv from binder/environment.yml, postBuild, start wrapping nbval) must pass."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from binder_env import build_env, ensure_binder_build
from emulator_process import free_port

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def test_repo2docker_uses_binder_folder():
    result = subprocess.run([str(BIN / "jupyter-repo2docker"), "--no-build", str(ROOT)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    dockerfile = result.stdout
    assert 'binder/environment.yml' in dockerfile
    assert "./binder/postBuild" in dockerfile
    assert 'R2D_ENTRYPOINT="${REPO_DIR}/binder/start"' in dockerfile
    assert "src/environment.yml" not in dockerfile  # the top-level file is for local conda users


def test_start_script_ends_with_exec():
    lines = [ln.strip() for ln in (ROOT / "binder/start").read_text().splitlines() if ln.strip() and not ln.startswith("#")]
    assert lines[-1] == 'exec "$@"'
    assert os.access(ROOT / "binder/start", os.X_OK) and os.access(ROOT / "binder/postBuild", os.X_OK)


@pytest.mark.slow
@pytest.mark.timeout(600)  # a fresh venv pip-installs every dependency: 1-2 min, more on a busy CI machine
def test_emulated_binder_build_runs_the_notebooks(tmp_path):
    # `make test` builds it beside the suite (tests/binder_env.py); this waits for that build.
    prebuilt = os.environ.get("CES_NB_BINDER_BUILD")
    repo, venv = ensure_binder_build(Path(prebuilt) if prebuilt else tmp_path / "binder")
    env = build_env(venv)

    def run(*cmd: str, timeout: int = 500) -> subprocess.CompletedProcess:
        result = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)
        assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        return result

    env["CES_NB_PORT"], env["CES_NB_REST_PORT"] = str(free_port()), str(free_port())
    env["CES_NB_LOG"] = str(tmp_path / "emulator.log")
    # -o addopts= drops the repo's own nbval emulator plugin: the notebooks must use the one start launched.
    try:
        result = run("binder/start", str(venv / "bin/python"), "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider",
                     "--nbval", "notebooks", "--nbval-sanitize-with", "notebooks/sanitize.cfg", "-q")
    finally:
        _kill_emulator_on(env["CES_NB_PORT"])  # start leaves it running for the session, as Binder wants
    assert " passed" in result.stdout and "failed" not in result.stdout
    log = (tmp_path / "emulator.log").read_text()
    assert "listening on 127.0.0.1:" + env["CES_NB_PORT"] in log
    assert "REST on http://127.0.0.1:" + env["CES_NB_REST_PORT"] in log


def _kill_emulator_on(port: str) -> None:
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            args = cmdline.read_bytes().split(b"\0")
        except OSError:
            continue
        if b"emulator" in args and port.encode() in args:
            os.kill(int(cmdline.parent.name), 15)
