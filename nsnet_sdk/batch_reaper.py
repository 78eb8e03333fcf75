"""A watcher that kills the local Ray a `nsnet batch` job started when the driver dies, SIGKILL
included (decode worker processes end by themselves: `pipeline.executors`)."""
from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from typing import Iterator

# Processes rename themselves (``ray::DashboardAgent``), so they are found by a variable in the
# environment they inherit from the driver, which names the job's temp folder.
OWNER_VAR = "NSNET_BATCH_RAY"
_REAPER = r"""
import os, select, shutil, signal, sys
tmp = sys.argv[1]
mark = ("%s=" % sys.argv[2]).encode() + tmp.encode() + b"\0"


def stat(pid):
    with open(f"/proc/{pid}/stat", "rb") as f:
        rest = f.read().rsplit(b")", 1)[1].split()
    return int(rest[1]), int(rest[19])  # parent, start time


def scan():
    # This job's processes: those carrying the mark, and their descendants (the raylet starts its
    # agents with an environment of its own, without the mark), as {pid: start time}.
    parent, start, marked = {}, {}, set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            parent[int(pid)], start[int(pid)] = stat(pid)
            with open(f"/proc/{pid}/environ", "rb") as f:  # a whole NAME=value entry, not a substring
                if (b"\0" + f.read()).find(b"\0" + mark) < 0:
                    continue
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                # multiprocessing's resource tracker unlinks the shared memory of a dead driver once
                # the processes holding its pipe are gone: it ends by itself, and must not be killed
                if b"multiprocessing.resource_tracker" in f.read():
                    continue
            marked.add(int(pid))
        except (OSError, IndexError, ValueError):
            continue
    doomed, grew = set(marked), True
    while grew:
        more = {p for p, pp in parent.items() if pp in doomed} - doomed
        doomed |= more
        grew = bool(more)
    return {p: start[p] for p in doomed}


# Watched while the driver lives: when it dies, Ray's own fate-sharing may end the raylet first,
# and its orphaned agents could no longer be found as its descendants.
known = {}
while True:
    ready, _, _ = select.select([0], [], [], 1.0)
    if ready:
        said = os.read(0, 4096)
        if not said:  # EOF: the driver closed its end, or died
            break
        if b"stand down" in said:  # the job ended and cleaned up after itself
            shutil.rmtree(tmp, ignore_errors=True)
            sys.exit(0)
    known.update(scan())
known.update(scan())
for pid, started in known.items():
    try:
        if stat(pid)[1] == started:  # the same process, not a reused pid
            os.kill(pid, signal.SIGKILL)
    except (OSError, IndexError, ValueError):
        pass
shutil.rmtree(tmp, ignore_errors=True)
"""




class Reaper:
    """A watcher process for the job marked by the folder ``tmp``: every process started while
    `marking` is in effect (it inherits `OWNER_VAR` naming ``tmp``) and every descendant of one is
    killed once the driver's end of a pipe closes, which the kernel does when the driver dies;
    ``tmp`` is removed then too. `close` ends the watch: ``kill=True`` kills them as a death would,
    ``kill=False`` leaves them (a job that cleaned up after itself)."""

    def __init__(self, tmp: str) -> None:
        self.tmp = tmp
        read_end, self.pipe = os.pipe()
        self.process = subprocess.Popen([sys.executable, "-c", _REAPER, tmp, OWNER_VAR],
                                        stdin=read_end, start_new_session=True)
        os.close(read_end)

    @contextlib.contextmanager
    def marking(self) -> Iterator[None]:
        """Processes started from this process meanwhile carry the mark."""
        saved = os.environ.get(OWNER_VAR)
        os.environ[OWNER_VAR] = self.tmp
        try:
            yield
        finally:
            if saved is None:
                os.environ.pop(OWNER_VAR, None)
            else:
                os.environ[OWNER_VAR] = saved

    def close(self, kill: bool) -> None:
        if not kill:
            os.write(self.pipe, b"stand down")
        os.close(self.pipe)
        self.process.wait(timeout=60)
