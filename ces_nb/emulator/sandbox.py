"""The limits the emulator puts on pythonFunction tool code (see python_runner)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

# The `ces-nb emulator` flag that sets each limit: error messages name it.
FLAGS = {
    "timeout_s": "--tool-timeout",
    "max_timeout_s": "--tool-max-timeout",
    "cpu_s": "--tool-cpu-s",
    "memory_mb": "--tool-memory-mb",
    "max_result_mb": "--tool-max-result-mb",
    "max_file_mb": "--tool-max-file-mb",
    "max_open_files": "--tool-max-open-files",
    "max_procs": "--tool-max-procs",
    "user": "--tool-user",
}


@dataclass(frozen=True)
class SandboxLimits:
    """What one pythonFunction call may use. An export cannot raise any of these: a tool's
    own `timeout` is clamped to `max_timeout_s`, and the rlimits are set, soft and hard, in
    the worker before it runs any export code (an unprivileged process cannot raise a hard
    limit).

    timeout_s       wall-clock seconds for a call whose tool sets no `timeout`.
    max_timeout_s   the most any call gets, whatever its tool's `timeout` says. Past its
                    timeout, or when the client's deadline passes or it cancels, the call's
                    worker is killed with its whole process group.
    cpu_s           CPU seconds per call (RLIMIT_CPU, re-armed before each call). A warm
                    worker's hard RLIMIT_CPU is 10 x cpu_s over its life; it is replaced
                    before it can run out.
    memory_mb       address space of a worker (RLIMIT_AS): a bigger allocation raises
                    MemoryError in the tool code, and the worker is replaced.
    max_result_mb   the largest JSON result; past it the call fails and the worker is
                    replaced. 8 MiB, like the emulator's largest input.
    max_file_mb     the largest file tool code may write (RLIMIT_FSIZE).
    max_open_files  open file descriptors per worker (RLIMIT_NOFILE).
    max_procs       processes and threads (RLIMIT_NPROC). Linux counts these per user and
                    does not enforce the limit on root, so it only binds when workers run as
                    `user`; as any other user it would count all of that user's processes,
                    so it is then left unset.
    user            when the emulator runs as root, workers drop to this user (and its
                    group, with no supplementary groups) before running export code, so they
                    cannot read the emulator's /proc/<pid>/environ or files only root can
                    read. None keeps root. Ignored when the emulator is not root.
    """

    timeout_s: float = 10.0
    max_timeout_s: float = 60.0
    cpu_s: int = 60
    memory_mb: int = 1024
    max_result_mb: float = 8.0
    max_file_mb: int = 64
    max_open_files: int = 256
    max_procs: int = 256
    user: str | None = "nobody"

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name != "user" and not value > 0:
                raise ValueError(f"{FLAGS[field.name]} must be positive, not {value!r}")

    def timeout_for(self, requested: float | None) -> float:
        """The wall-clock timeout of a call whose tool asks for `requested` seconds."""
        return min(requested or self.timeout_s, self.max_timeout_s)

    def describe(self, limit: str | None) -> str | None:
        """A limit as an error message names it, e.g. 'the memory limit is 1024 MiB (--tool-memory-mb)'."""
        text = {
            "cpu_s": f"the CPU time limit is {self.cpu_s} s",
            "memory_mb": f"the memory limit is {self.memory_mb} MiB",
            "max_file_mb": f"the file size limit is {self.max_file_mb} MiB",
            "max_open_files": f"the open-file limit is {self.max_open_files}",
            "max_procs": f"the process limit is {self.max_procs}",
        }.get(limit or "")
        return f"{text} ({FLAGS[limit]})" if text else None
