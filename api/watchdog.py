"""Children end with the service, even when the service is killed with SIGKILL.

`crossfold serve` starts a local Ray and the MLflow UI as child processes. When the
service dies without cleaning up (kill -9, the out-of-memory killer), they would live
on: Ray's agents ignore SIGTERM, and the MLflow UI keeps its port, where a restarted
service would then silently show the old one. So serve starts this watchdog first, in
a session of its own: it notes the service's descendants twice a second and, once the
service is gone, ends every one of them (SIGTERM, then SIGKILL after a grace period).

It learns of the death through a pipe: the service holds the only write end, which
the kernel closes when the service dies, however it dies. Linux only (it reads /proc).

    python -m api.watchdog SERVICE_PID PIPE_FD LOG_FILE
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

SNAPSHOT_EVERY_S = 0.5
GRACE_S = 5.0

Process = tuple[int, int]  # (pid, start time in clock ticks): a pid is reused, the pair is not


def start(service_pid: int, log_file: Path) -> int | None:
    """Start the watchdog for this process; returns the write end the service must keep
    open for its lifetime, or None where there is no /proc to watch with. What the
    watchdog ends goes to `log_file`."""
    if not Path("/proc/self/stat").exists():
        return None
    read_end, write_end = os.pipe()  # both non-inheritable: no other child holds them
    with open(log_file, "ab") as log:
        subprocess.Popen([sys.executable, "-m", "api.watchdog", str(service_pid), str(read_end)],
                         pass_fds=(read_end,), start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    os.close(read_end)
    return write_end


def stat_of(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) from /proc/PID/stat, or None once it has ended (a zombie
    has: it only waits for a parent to read its exit status)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] in ("Z", "X") else (int(fields[1]), int(fields[19]))


def descendants(root: int) -> set[Process]:
    parents: dict[int, list[Process]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (found := stat_of(int(entry.name))) is not None:
            parents.setdefault(found[0], []).append((int(entry.name), found[1]))
    seen, stack = set(), [root]
    while stack:
        for child in parents.get(stack.pop(), []):
            seen.add(child)
            stack.append(child[0])
    return seen


def alive(process: Process) -> bool:
    found = stat_of(process[0])
    return found is not None and found[1] == process[1]


def end_all(processes: set[Process], grace_s: float = GRACE_S) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for process in [p for p in processes if alive(p)]:
            try:
                os.kill(process[0], sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while sig == signal.SIGTERM and time.monotonic() < deadline and any(map(alive, processes)):
            time.sleep(0.1)


def watch(service_pid: int, pipe_fd: int) -> None:
    known: set[Process] = set()
    while not select.select([pipe_fd], [], [], SNAPSHOT_EVERY_S)[0]:
        # Kept while alive, not replaced: a look taken as the service dies finds its children
        # already moved to another parent, and must not forget them.
        known = {p for p in known if alive(p)} | {p for p in descendants(service_pid) if p[0] != os.getpid()}
    # Readable: EOF, the service is gone (it never writes). What it started goes too.
    left = [p for p in known if alive(p)]
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S')} service {service_pid} ended; ending the "
          f"{len(left)} processes it left: {sorted(pid for pid, _ in left)}", flush=True)
    end_all(known)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C for the service is not for us
    watch(int(sys.argv[1]), int(sys.argv[2]))
