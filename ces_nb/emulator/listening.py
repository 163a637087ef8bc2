"""A listening TCP socket bound before anything serves, so a taken port is an error that says
which port and what to type instead (REST's and TLS's ports; gRPC binds its own)."""

from __future__ import annotations

import socket


def listening_socket(host: str, port: int, *, what: str, flag: str, backlog: int, reuse_port: bool = False) -> socket.socket:
    """A non-blocking socket listening on host:port (port 0 picks a free one).

    what: the port's name in errors ("REST", "TLS"); flag: the option that picks another
    (--rest-port); reuse_port: share the port with sibling `--workers` processes."""
    bare = host.strip("[]")
    try:
        family, kind, proto, _, address = socket.getaddrinfo(bare, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
        sock = socket.socket(family, kind, proto)
    except OSError as exc:
        raise OSError(f"cannot serve {what} on {host}: {exc}") from None
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # past TIME_WAIT, never a live listener
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind(address)
        sock.listen(backlog)
    except OSError:
        sock.close()
        raise OSError(
            f"{what} port {port} on {host} is taken (another emulator, or another program, listens there); "
            f"stop it, or pick another: {flag} {port + 1} (or {flag} 0 for any free one)") from None
    sock.setblocking(False)
    return sock
