"""The emulated Binder build for tests/test_binder.py: this checkout copied, a fresh venv with
binder/environment.yml's pip packages, then binder/postBuild, as repo2docker runs them.

It is the slow part of that test (minutes of pip on a busy machine), so `make test` builds it in
the background beside the suite, into `.binder-build` (made empty first), and the test waits for
it on its lock. Built from scratch every run: nothing of an earlier build is reused. Run without
make, the test builds it itself in its temporary folder.

    python tests/binder_env.py DEST
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_S = 500
# What the copy leaves out: this machine's environments, build products, and the build itself.
# What the suite writes while the copy is made is left out too.
IGNORED = (".venv", ".venv-*", ".*.lock", ".scrapi-env.log", ".binder-build", ".binder-build.log", ".git", "build",
           "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis", ".ipynb_checkpoints", "quickstart-transcript.json",
           "evaluate-tutorial")


def build_env(venv: Path) -> dict[str, str]:
    """The environment the build and the notebooks run in: the venv first on PATH, none of this
    run's emulator settings. PIP_NO_COMPILE: no .pyc for the ~150 packages (a sixth of the
    install's time here); what the notebooks run is the same without them."""
    env = {**os.environ, "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "VIRTUAL_ENV": str(venv), "PIP_NO_COMPILE": "1"}
    env.pop("CES_NB_EMULATOR", None)
    env.pop("PYTHONPATH", None)
    return env


def ensure_binder_build(dest: Path) -> tuple[Path, Path]:
    """(the repository copy, its venv), built into `dest` unless it already is; raises
    RuntimeError with the failing step's output if the build failed (this time or in the
    background)."""
    dest.mkdir(parents=True, exist_ok=True)
    repo, venv = dest / "repo", dest / "venv"
    with open(dest / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # the background build holds it until it is done
        if (dest / ".built").exists():
            return repo, venv
        if (dest / ".failed").exists():
            raise RuntimeError((dest / ".failed").read_text())
        try:
            _build(repo, venv)
        except RuntimeError as exc:
            (dest / ".failed").write_text(str(exc))
            raise
        (dest / ".built").write_text("")
    return repo, venv


def _build(repo: Path, venv: Path) -> None:
    shutil.rmtree(repo, ignore_errors=True)
    shutil.rmtree(venv, ignore_errors=True)
    shutil.copytree(ROOT, repo, ignore=shutil.ignore_patterns(*IGNORED))
    env_file = yaml.safe_load((repo / "binder/environment.yml").read_text())
    deps = [d for d in env_file["dependencies"] if isinstance(d, dict)][0]["pip"]
    env = build_env(venv)
    for step in ([sys.executable, "-m", "venv", str(venv)],
                 [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", *deps],
                 ["binder/postBuild"]):
        try:
            done = subprocess.run(step, cwd=repo, env=env, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"the emulated Binder build failed at {step[:4]}: {exc}") from None
        if done.returncode != 0:
            raise RuntimeError(f"the emulated Binder build failed at {step[:4]}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python tests/binder_env.py DEST")
    try:
        print(ensure_binder_build(Path(sys.argv[1]).resolve()))
    except RuntimeError as exc:
        sys.exit(str(exc))
