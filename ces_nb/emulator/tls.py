"""TLS for clients that insist on it (`ces-nb emulator --tls`).

* A local CA, made once with `cryptography` and kept private in the emulator's data directory
  (`$XDG_DATA_HOME/ces_nb/tls`, mode 0700; keys 0600). It signs a server certificate for
  `localhost`, `127.0.0.1` and `::1`.
* `roots.pem` holds that CA and certifi's public roots: pointing `GRPC_DEFAULT_SSL_ROOTS_FILE_PATH`
  and `REQUESTS_CA_BUNDLE` at it lets clients trust the emulator without distrusting the rest of
  the internet in the same shell.
* `TlsFront` serves one TLS port for both gRPC and HTTPS REST, as ces.googleapis.com:443 does:
  the ALPN protocol the client negotiates picks the back end (h2 -> the gRPC server, anything
  else -> the REST binding), and the bytes are piped to it. HTTP/1.1 is preferred when a client
  offers both (curl), since gRPC clients offer h2 only.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import fcntl
import ipaddress
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from pathlib import Path

from .listening import listening_socket

log = logging.getLogger("ces_nb.emulator")

CA_DAYS = 3650
SERVER_DAYS = 397
RENEW_BEFORE = dt.timedelta(days=30)
HOSTS = ("localhost",)
IPS = ("127.0.0.1", "::1")
PIPE_BYTES = 256 * 1024


def default_tls_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "ces_nb" / "tls"


@dataclass(frozen=True)
class TlsFiles:
    directory: Path
    ca: Path            # the CA certificate (public)
    roots: Path         # the CA + certifi's roots: what clients trust
    cert: Path          # the server certificate chain
    key: Path           # the server key (0600)


def _write_private(path: Path, data: bytes, mode: int = 0o600) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _private_dir(path: Path) -> None:
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(path, 0o700)


def ensure_tls_files(directory: str | os.PathLike | None = None) -> TlsFiles:
    """The CA (made once) and a current server certificate in `directory`, made or renewed as
    needed. Safe when several emulators start at once (a lock file serializes them)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    root = Path(directory) if directory else default_tls_dir()
    try:
        _private_dir(root)
    except OSError as exc:
        raise OSError(f"cannot keep the emulator's TLS files in {root}: {exc}; set XDG_DATA_HOME to a writable folder") from None
    files = TlsFiles(root, root / "ca.pem", root / "roots.pem", root / "server.pem", root / "server-key.pem")
    with open(root / ".lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        ca_key_path = root / "ca-key.pem"
        if not (ca_key_path.exists() and files.ca.exists()):
            _make_ca(ca_key_path, files.ca)
        ca_key = serialization.load_pem_private_key(ca_key_path.read_bytes(), None)
        ca_cert = x509.load_pem_x509_certificate(files.ca.read_bytes())
        if not _server_cert_current(files, ca_cert):
            _make_server_cert(files, ca_key, ca_cert)
        roots = files.ca.read_bytes() + b"\n" + _public_roots()
        if not files.roots.exists() or files.roots.read_bytes() != roots:
            _write_private(files.roots, roots, 0o644)
    return files


def _public_roots() -> bytes:
    try:
        import certifi

        return Path(certifi.where()).read_bytes()
    except (ImportError, OSError):
        return b""


def _name(common_name: str):
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "ces-nb emulator"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _make_ca(key_path: Path, cert_path: Path) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    name = _name(f"ces-nb emulator local CA ({socket.gethostname()[:40]})")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write_private(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    _write_private(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def _server_cert_current(files: TlsFiles, ca_cert) -> bool:
    from cryptography import x509

    if not (files.cert.exists() and files.key.exists()):
        return False
    try:
        cert = x509.load_pem_x509_certificate(files.cert.read_bytes())
    except ValueError:
        return False
    left = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
    return cert.issuer == ca_cert.subject and left > RENEW_BEFORE


def _make_server_cert(files: TlsFiles, ca_key, ca_cert) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID

    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.timezone.utc)
    names = [x509.DNSName(h) for h in HOSTS] + [x509.IPAddress(ipaddress.ip_address(i)) for i in IPS]
    cert = (x509.CertificateBuilder().subject_name(_name("localhost")).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5)).not_valid_after(now + dt.timedelta(days=SERVER_DAYS))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    _write_private(files.key, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                serialization.NoEncryption()))
    _write_private(files.cert, cert.public_bytes(serialization.Encoding.PEM), 0o644)


def server_context(files: TlsFiles) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(str(files.cert), str(files.key))
    context.set_alpn_protocols(["http/1.1", "h2"])  # server preference: HTTP/1.1 when both are offered
    return context


def client_environment(files: TlsFiles, endpoint: str, token: str | None = None) -> dict[str, str]:
    """What a client needs to reach the emulator over TLS, as environment variables. CES_API_ENDPOINT
    and CXAS_OAUTH_TOKEN are what cxas-scrapi reads (core/common.py); the token is any string unless
    the emulator requires one."""
    return {
        "GRPC_DEFAULT_SSL_ROOTS_FILE_PATH": str(files.roots),
        "REQUESTS_CA_BUNDLE": str(files.roots),
        "CES_API_ENDPOINT": endpoint,
        "CXAS_OAUTH_TOKEN": token or "ces-nb-emulator",
    }


def export_lines(environment: dict[str, str]) -> str:
    import shlex

    return "\n".join(f"export {k}={shlex.quote(v)}" for k, v in environment.items())


# -- one TLS port for gRPC and REST ----------------------------------------------------------------

def _dial_host(host: str) -> str:
    host = host.strip("[]")
    return {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


class TlsFront:
    """Terminates TLS on its port and pipes each connection to the gRPC server (ALPN h2) or the
    REST binding (HTTP/1.1), both on this machine."""

    def __init__(self, host: str, port: int, files: TlsFiles, grpc_port: int, rest_port: int, rest_host: str | None = None):
        self.host, self.port, self.files = host, port, files
        self._grpc = (_dial_host(host), grpc_port)
        self._rest = (_dial_host(rest_host or host), rest_port)
        self._socket: socket.socket | None = None
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task] = set()

    def bind(self) -> None:
        self._socket = listening_socket(self.host, self.port, what="TLS", flag="--tls-port", backlog=1024)
        self.port = self._socket.getsockname()[1]

    @property
    def endpoint(self) -> str:
        """host:port as clients dial it: the certificate names localhost."""
        host = self.host.strip("[]")
        return f"localhost:{self.port}" if host in ("127.0.0.1", "localhost", "::1", "", "0.0.0.0", "::") else f"{host}:{self.port}"

    async def start(self) -> None:
        if self._socket is None:
            self.bind()
        self._server = await asyncio.start_server(self._accept, sock=self._socket, ssl=server_context(self.files),
                                                  ssl_handshake_timeout=10)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._connections.add(task)
        try:
            ssl_object = writer.get_extra_info("ssl_object")
            alpn = ssl_object.selected_alpn_protocol() if ssl_object else None
            target = self._grpc if alpn == "h2" else self._rest
            try:
                up_reader, up_writer = await asyncio.open_connection(*target)
            except OSError as exc:
                log.warning("TLS front: cannot reach %s:%s: %s", *target, exc)
                return
            try:
                await _pipe_both(reader, writer, up_reader, up_writer)
            finally:
                up_writer.close()
        except (ConnectionError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 1)

    async def stop(self, grace: float = 2.0) -> None:
        if self._server is not None:
            self._server.close()
            if self._connections:
                _, pending = await asyncio.wait(set(self._connections), timeout=grace)
                for task in pending:
                    task.cancel()
            self._server = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, half_close: bool = False) -> bool:
    """Copies until EOF; True when it ended cleanly."""
    try:
        while True:
            data = await reader.read(PIPE_BYTES)
            if not data:
                if half_close and writer.can_write_eof():
                    writer.write_eof()
                return True
            writer.write(data)
            await writer.drain()
    except (ConnectionError, ssl.SSLError, OSError):
        return False


async def _pipe_both(client_r, client_w, up_r, up_w) -> None:
    """Both directions until the back end is done answering. A client that finishes sending
    passes its EOF on (the back end then closes when it has answered); a broken side ends both."""
    up = asyncio.ensure_future(_pipe(client_r, up_w, half_close=True))
    down = asyncio.ensure_future(_pipe(up_r, client_w))
    try:
        done, _ = await asyncio.wait((up, down), return_when=asyncio.FIRST_COMPLETED)
        if down not in done and up.result():
            await down
    finally:
        for t in (up, down):
            t.cancel()
        for t in (up, down):
            with contextlib.suppress(BaseException):
                await t
