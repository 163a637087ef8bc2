"""Which emulator worker holds the other end of a client's TCP connections, read from /proc:
`ces-nb emulator --workers N` lets the kernel place each connection on a worker (SO_REUSEPORT),
and tests and benchmarks need to know where theirs went."""

from __future__ import annotations

import os


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    return inodes


def tcp_ends() -> dict[str, tuple[str, str]]:
    """inode -> (local, remote) address of every TCP socket, as /proc/net has them."""
    ends = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                ends[cols[9]] = (cols[1], cols[2])
    return ends


def connected_workers(client_pid: int, workers: list[int]) -> dict[str, int]:
    """Local address of each of `client_pid`'s connections -> the worker holding its other end."""
    ends = tcp_ends()
    mine = {ends[i][0] for i in socket_inodes(client_pid) if i in ends}
    found = {}
    for worker in workers:
        for inode in socket_inodes(worker):
            if inode in ends and ends[inode][1] in mine:
                found[ends[inode][1]] = worker
    return found
