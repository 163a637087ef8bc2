"""A venv with cxas-scrapi from the registry, for the tests that drive it against the emulator.

Built once per scrapi version and kept (`.venv-scrapi-<version>` at the repository root, or
`$CES_NB_SCRAPI_VENV`), so later runs reuse it; `make scrapi-env` builds it ahead of time.
Nothing of scrapi is patched: tests only set environment variables.

It installs with uv when the test extra brought it (a few seconds of CPU, against pip's half
minute, which `make test` would spend beside the suite on a fresh clone), else with pip; if uv
cannot install it (uv reads no pip.conf, so a private index may be out of its reach), pip does."""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
from pathlib import Path

SCRAPI_VERSION = os.environ.get("CES_NB_SCRAPI_VERSION", "1.10.0")
ROOT = Path(__file__).resolve().parent.parent
BUILD_TIMEOUT_S = 1500


class ScrapiEnvError(RuntimeError):
    pass


def venv_path() -> Path:
    return Path(os.environ.get("CES_NB_SCRAPI_VENV") or ROOT / f".venv-scrapi-{SCRAPI_VERSION}")


def ensure_scrapi_venv() -> Path:
    """The venv's python, building the venv first if it is missing or half built."""
    venv = venv_path()
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if stamp.exists():
        return python
    venv.parent.mkdir(parents=True, exist_ok=True)
    with open(venv.parent / f".{venv.name}.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another run may be building it right now
        if stamp.exists():
            return python
        _run([sys.executable, "-m", "venv", "--clear", str(venv)])
        requirement = f"cxas-scrapi=={SCRAPI_VERSION}"
        if not _installed_with_uv(python, requirement):
            _run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", requirement])
        stamp.write_text(SCRAPI_VERSION + "\n")
    return python


def _installed_with_uv(python: Path, requirement: str) -> bool:
    """True once uv installed it; False (pip's turn) when uv is missing or failed, saying why."""
    try:
        from uv import find_uv_bin

        uv = find_uv_bin()
    except (ImportError, FileNotFoundError):
        print(f"uv is not installed (the test extra has it); pip installs {requirement}", file=sys.stderr)
        return False
    try:
        _run([uv, "pip", "install", "--quiet", "--native-tls", "--python", str(python), *_find_links(), requirement])
    except ScrapiEnvError as exc:
        print(f"uv did not install {requirement} ({str(exc).splitlines()[0]}); pip does", file=sys.stderr)
        return False
    return True


def _find_links() -> list[str]:
    """pip's --find-links from its environment (uv reads no pip configuration)."""
    return [arg for link in os.environ.get("PIP_FIND_LINKS", "").split() for arg in ("--find-links", link)]


def _run(step: list[str]) -> None:
    try:
        done = subprocess.run(step, capture_output=True, text=True, timeout=BUILD_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ScrapiEnvError(f"building the cxas-scrapi venv failed at {' '.join(step[:4])}: {exc}") from None
    if done.returncode != 0:
        raise ScrapiEnvError(f"building the cxas-scrapi venv failed at {' '.join(step[:4])}:\n{done.stderr[-3000:]}")


if __name__ == "__main__":
    print(ensure_scrapi_venv())
