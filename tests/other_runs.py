"""Another run of a stage, for the tests of one run per output folder (siren.outputs): a process that
holds a folder's lock while the test runs, and a process killed with SIGKILL in the middle of its
final write (what it leaves: its lock file and its hidden staging folder)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager

from conftest import REPO

_HOLD = """
import sys, time
from siren.outputs import FolderLock
FolderLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(600)
"""

# A stage run stopped inside its commit: the lock taken, outputs half written in the staging folder.
_WRITE = """
import sys, time
from siren.outputs import StageOutputs
outputs = StageOutputs(sys.argv[1], [sys.argv[2]], script="killed.py", overwrite=True)
with outputs.claimed(), outputs.commit({}) as staged:
    staged.path(sys.argv[2]).write_text("half written")
    print("writing", flush=True)
    time.sleep(600)
"""


def _start(code: str, *args: str) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", code, *args], cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = process.stdout.readline().strip()
    if line not in ("held", "writing"):
        process.kill()
        raise AssertionError(f"the other run did not start: {line!r}")
    return process


@contextmanager
def run_holding(folder: str | os.PathLike) -> Iterator[int]:
    """A live process holding `folder`'s lock while the block runs; yields its process id."""
    process = _start(_HOLD, str(folder))
    try:
        yield process.pid
    finally:
        process.kill()
        process.wait()


def run_killed_while_writing(folder: str | os.PathLike, name: str = "out.txt") -> int:
    """A run into `folder` killed with SIGKILL while it wrote output `name`; returns its process id."""
    process = _start(_WRITE, str(folder), name)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    return process.pid
