"""`ces-nb demo` (what `make demo` runs): an emulator plus JupyterLab on notebooks/, both gone after Ctrl-C."""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from emulator_process import free_port

ROOT = Path(__file__).resolve().parent.parent



@pytest.mark.slow
@pytest.mark.timeout(240)  # the emulator and JupyterLab start: about 15 s here
def test_demo_serves_the_notebooks_against_the_emulator():
    emulator_port, rest_port, lab_port = free_port(), free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ces_nb", "demo", "--notebooks", str(ROOT / "notebooks"), "--port", str(emulator_port),
         "--rest-port", str(rest_port), "--lab-port", str(lab_port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        url = None
        deadline = time.monotonic() + 90
        seen = []
        while time.monotonic() < deadline and url is None:
            line = proc.stdout.readline()
            if not line:
                break
            seen.append(line)
            match = re.search(rf"(http://127\.0\.0\.1:{lab_port}/lab\?token=\w+)", line)
            url = match.group(1) if match else None
        assert url, "".join(seen)
        assert any(f"CES emulator at 127.0.0.1:{emulator_port}" in s for s in seen)
        token = url.split("token=")[1]
        status = None
        for _ in range(80):  # the URL is printed a moment before the server accepts
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{lab_port}/api/contents/01-quickstart.ipynb?token={token}&content=0") as r:
                    status = r.status
                break
            except OSError:
                time.sleep(0.25)
        assert status == 200
        with socket.create_connection(("127.0.0.1", emulator_port), timeout=2):
            pass
        with urllib.request.urlopen(f"http://127.0.0.1:{rest_port}/v1/projects/p/locations/us/apps") as r:  # REST is on
            assert b"skyway" in r.read()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    time.sleep(1)
    for port in (emulator_port, rest_port, lab_port):
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", port)) != 0, f"port {port} still served after the demo stopped"
