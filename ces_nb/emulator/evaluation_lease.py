"""Which process plays an evaluation run, and whether it still does.

A run plays in the emulator process that started it. If that process dies (kill -9, a crash, a
restart), nothing would ever finish the run, and a client polling its operation (as
cxas-scrapi's golden runner does) would wait for ever. So the playing process keeps a lease on
each of its runs in the evaluation store, renewed every few seconds, naming itself (host, pid and
the pid's start time, so a reused pid is not taken for it). Any process sharing the store that
reads a RUNNING run checks the lease: gone is gone at once when the owner was on this host;
from another host, a lease unrenewed for LEASE_EXPIRES_S is taken as gone.
"""

from __future__ import annotations

import os
import socket
import time

from google.protobuf import struct_pb2

from .services.operations import RawProto

LEASE_RENEW_S = 5.0
LEASE_EXPIRES_S = 30.0
Lease = RawProto(struct_pb2.Struct)


def _start_ticks(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (/proc/PID/stat, field 22), or None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()  # the command name, in (), may hold spaces
    return fields[19] if len(fields) > 19 and fields[0] != "Z" else None


def lease_for_this_process() -> struct_pb2.Struct:
    lease = struct_pb2.Struct()
    lease.update({"host": socket.gethostname(), "pid": os.getpid(), "started": _start_ticks(os.getpid()) or "",
                  "renewed": time.time()})
    return lease


def holder_is_gone(lease: struct_pb2.Struct | None, now: float | None = None) -> bool:
    """True when no live process holds `lease` (or there is none)."""
    if lease is None:
        return True
    values = dict(lease)
    if values.get("host") == socket.gethostname():
        pid = int(values.get("pid", 0))
        return pid <= 0 or _start_ticks(pid) != values.get("started")
    return (now if now is not None else time.time()) - float(values.get("renewed", 0)) > LEASE_EXPIRES_S
