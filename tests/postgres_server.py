"""A real PostgreSQL for the tests: `initdb` and `pg_ctl` in a temporary folder, on a free port,
listening on 127.0.0.1 and a Unix socket in that folder, trusting local connections.

PostgreSQL refuses to run as root, so as root the cluster belongs to `nobody` and its programs
run under `setpriv` (util-linux) as that user; the folder is made theirs. (pytest-postgresql does
the same work with `pg_ctl` as the current user, so it can't run as root.) The binaries come from
PATH, else from Debian's /usr/lib/postgresql/<version>/bin (`apt-get install postgresql`).

Without PostgreSQL a test that needs it is skipped; under CI=true it fails, so CI can't pass
without testing this store.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import pytest


def pg_bin(program: str) -> str | None:
    found = shutil.which(program)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{program}"),
                        key=lambda p: int(p.split("/")[4]) if p.split("/")[4].isdigit() else 0)
    return candidates[-1] if candidates else None


def missing(reason: str):
    """Skip, or under CI=true fail: CI must test PostgreSQL."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"PostgreSQL is needed under CI=true: {reason} (.ci/run installs Debian's postgresql)")
    pytest.skip(f"no PostgreSQL here: {reason}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    def __init__(self):
        self.initdb, self.pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
        if not self.initdb or not self.pg_ctl:
            missing("initdb and pg_ctl are not on PATH nor in /usr/lib/postgresql/*/bin")
        self.folder = tempfile.mkdtemp(prefix="ces-nb-pg-")
        self.data = os.path.join(self.folder, "data")
        self.log = os.path.join(self.folder, "server.log")
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            if not shutil.which("setpriv"):
                missing("running as root, and setpriv (util-linux) is not here to run PostgreSQL as nobody")
            nobody = pwd.getpwnam("nobody")
            os.chown(self.folder, nobody.pw_uid, nobody.pw_gid)
            self.as_user = ["setpriv", f"--reuid={nobody.pw_uid}", f"--regid={nobody.pw_gid}", "--clear-groups"]
        os.chmod(self.folder, 0o700)
        self.user = "postgres"
        self._run([self.initdb, "-D", self.data, "-U", self.user, "--auth=trust", "-E", "UTF8", "--no-sync"])
        self.port = 0
        for _attempt in range(3):  # a free port can be taken between picking and binding it
            self.port = _free_port()
            options = f"-p {self.port} -k {self.folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
            started = subprocess.run([*self.as_user, self.pg_ctl, "-D", self.data, "-l", self.log, "-w", "-t", "60",
                                      "-o", options, "start"], capture_output=True, text=True, cwd=self.folder)
            if started.returncode == 0:
                break
        else:
            log = open(self.log).read()[-2000:] if os.path.exists(self.log) else ""
            self.stop()
            raise RuntimeError(f"PostgreSQL did not start: {started.stdout}{started.stderr}{log}")

    def _run(self, cmd: list[str]) -> None:
        done = subprocess.run([*self.as_user, *cmd], capture_output=True, text=True, cwd=self.folder)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stdout}{done.stderr}")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> str:
        """A new, empty database; its URL."""
        import psycopg

        name = name or f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(host="127.0.0.1", port=self.port, user=self.user, dbname="postgres",
                             autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            subprocess.run([*self.as_user, self.pg_ctl, "-D", self.data, "-m", "fast", "-w", "stop"],
                           capture_output=True, cwd=self.folder)
        for _ in range(20):
            try:
                shutil.rmtree(self.folder)
                return
            except OSError:
                time.sleep(0.1)


@pytest.fixture(scope="session")
def postgres_server():
    try:
        import psycopg  # noqa: F401
    except ImportError:
        missing("the psycopg driver is not installed (pip install 'ces_nb[postgres]')")
    server = PostgresServer()
    yield server
    server.stop()


@pytest.fixture
def postgres_url(postgres_server) -> str:
    """A fresh database for one test."""
    return postgres_server.create_database()
