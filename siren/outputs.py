"""What a stage writes: its outputs, declared once, checked before any work, held while it runs,
committed together with the manifest.

    outputs = StageOutputs(out_dir, [RESULTS_NAME, MASK_NAME], script="inference_train_ddp.py",
                           inputs=[data_file, args.model], overwrite=args.overwrite).check()  # validate()
    with outputs.claimed(state):                       # run: one run per output folder
        ...
        with outputs.commit(args, timer) as staged:    # write: all outputs + manifest.json, or none
            write_results(staged.path(RESULTS_NAME))
            staged.record(counts={...}, extra={...})

`check()` (every process, changes nothing) refuses, in one line:
- an output folder that is, holds, lies above or inside one of the stage's inputs
  (`siren.io.check_output_clear_of_inputs`): an --overwrite there could replace what it reads;
- an unusable folder, and finished outputs without --overwrite (`siren.io.check_output_folder`);
- a folder whose manifest.json another script wrote: --overwrite replaces only this stage's own
  outputs, never another stage's.

`claimed(state)` holds the folder's lock while the stage runs: an exclusive `flock` on
`.<folder name>.lock` beside the folder, taken once, by the main process of a multi-process run,
which tells the others whether it got it (no process waits on a lock). A second run into the folder
is refused at once, naming the process that holds it; the kernel drops the lock of a process that
dies, so a lock left by a killed run is taken over (and said so). The lock file records its holder
(process id, host, command) and is removed on release, so a record found on taking the lock is a
killed run's: its staging folders beside the output (`siren.io.leftover_scratch`) are removed too.
A file system without flock gets a note, and no lock.

`commit(args, timer)` stages the outputs in a hidden folder and moves them into place together
with the manifest (`siren.io.atomic_outputs`); `names=None` declares a stage whose output is the
folder itself (a model folder), replaced whole.

Why not the `filelock` package: the refusal must name the holder, so the holder's record lives in
the lock file; filelock 3.x truncates the lock file on every attempt to take it (erasing the
record), and its 4.x way to write it is a callback API the pinned stack does not guarantee. The
flock below is the same system call filelock's UnixFileLock makes.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import socket
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from siren import SirenError
from siren.io import MANIFEST_NAME, read_manifest, write_manifest
from siren.manifest import manifest_script

_BUSY_ERRNOS = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES}
_NO_LOCKS_ERRNOS = {errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP}


def lock_path(folder: str | os.PathLike) -> Path:
    folder = Path(folder)
    return folder.parent / f".{folder.name}.lock"


def _holder_record() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])[:300]}


def _read_record(fd: int) -> dict | None:
    """The holder record in a lock file; None for an empty file (nobody recorded there)."""
    try:
        data = os.pread(fd, 4096, 0)
        if not data.strip():
            return None
        record = json.loads(data.decode("utf-8"))
    except (OSError, ValueError):
        record = None
    return record if isinstance(record, dict) else {"pid": "unknown"}


def _describe(record: dict | None) -> str:
    if not record:
        return "process id not recorded yet"
    where = f" on {record['host']}" if record.get("host") and record.get("host") != socket.gethostname() else ""
    started = f", started {record['started']}" if record.get("started") else ""
    command = f": {record['command']}" if record.get("command") else ""
    return f"process {record.get('pid')}{where}{started}{command}"


class FolderLock:
    """One run per folder: an exclusive flock on `.<name>.lock` beside it (see the module doc)."""

    def __init__(self, folder: str | os.PathLike, flag: str = "--output_dir") -> None:
        self.folder = Path(folder)
        self.path = lock_path(self.folder)
        self.flag = flag
        self.fd: int | None = None
        self.made: list[Path] = []  # parent folders made for the lock file, deepest first

    def acquire(self) -> dict | None:
        """Take the lock or refuse in one line; returns the record a killed holder left (None: none).

        The lock file is removed on release, so a file that was replaced or removed between
        opening and locking it is not the lock any more: open it again.
        """
        from siren.io import make_folders

        self.made = make_folders(self.path.parent)[::-1]
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError as err:
                raise SirenError(f"cannot create the lock {self.path} of output folder {self.folder}: "
                                 f"{err.strerror}") from None
            try:
                import fcntl

                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                holder = _read_record(fd)
                os.close(fd)
                if err.errno in _NO_LOCKS_ERRNOS:
                    print(f"note: the file system of {self.folder} has no file locks: a second run into it is not "
                          "refused", file=sys.stderr)
                    return None
                if err.errno in _BUSY_ERRNOS:
                    raise SirenError(f"output folder {self.folder} is in use by another run ({_describe(holder)}); "
                                     f"one run per folder: wait for it to end, or choose another {self.flag}") from None
                raise
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        left = _read_record(fd)
        record = json.dumps(_holder_record()).encode("utf-8")
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        self.fd = fd
        return left

    def release(self) -> None:
        """Remove the lock file while still holding it, then let go (so nobody locks a removed file)."""
        if self.fd is not None:
            with contextlib.suppress(OSError):
                if os.path.samestat(os.fstat(self.fd), os.stat(self.path)):
                    os.unlink(self.path)
            os.close(self.fd)
            self.fd = None
        for folder in self.made:  # those the lock made and nothing else filled (a failed first run)
            try:
                folder.rmdir()
            except OSError:
                break


def remove_leftovers(target: Path, left: dict | None) -> list[str]:
    """While holding `target`'s lock: remove the staging folders killed runs left beside it; notes to print."""
    from siren.io import leftover_scratch

    notes = []
    if left is not None:
        notes.append(f"note: took over the lock of {target} from {_describe(left)}, which ended without releasing "
                     "it (killed?)")
    stale = leftover_scratch(target)
    for path in stale:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    if stale:
        notes.append(f"note: removed {len(stale)} staging folder(s) a killed run of {target} left: "
                     + ", ".join(p.name for p in stale))
    return notes


@contextlib.contextmanager
def claimed_folder(folder: str | os.PathLike, state=None, flag: str = "--output_dir") -> Iterator[None]:
    """Hold `folder`'s lock while the block runs (see the module doc). `state` (accelerate's
    PartialState) makes it collective: only the main process takes the lock, and every process
    stops with the same one-line error when it could not."""
    lock = FolderLock(folder, flag)
    main = state is None or state.is_main_process
    error, notes = None, []
    if main:
        try:
            notes = remove_leftovers(Path(folder), lock.acquire())
        except SirenError as err:
            error = str(err)
    if state is not None and state.num_processes > 1:
        from siren.distributed import from_main

        error = from_main(state, error)
    if error:
        lock.release()
        raise SirenError(error)
    for note in notes:
        print(note, file=sys.stderr)
    try:
        yield
    finally:
        if main:
            lock.release()


class StagedOutputs:
    """The staging folder of one commit: write output `name` to `path(name)` (or into `dir`)."""

    def __init__(self, outputs: StageOutputs, staging: Path) -> None:
        self.outputs = outputs
        self.dir = staging
        self.counts: dict = {}
        self.extra: dict = {}

    def path(self, name: str) -> Path:
        if self.outputs.names is not None and name not in self.outputs.names:
            raise SirenError(f"internal error: {name} is not a declared output of {self.outputs.script}")
        return self.dir / name

    def final_path(self, name: str) -> Path:
        """Where output `name` will be once the commit has succeeded (for messages and manifests)."""
        return self.outputs.folder / name

    def record(self, counts: dict | None = None, extra: dict | None = None) -> None:
        """Counts and extra fields for the manifest, which the commit writes when its block ends."""
        self.counts.update(counts or {})
        self.extra.update(extra or {})


class StageOutputs:
    """A stage's outputs: the folder, the entries it writes there (manifest.json is added), the
    script that writes them, the inputs they must stay clear of. See the module doc."""

    def __init__(self, folder: str | os.PathLike, names: Iterable[str] | None, *, script: str,
                 inputs: Iterable[str | os.PathLike | None] = (), overwrite: bool = False,
                 flag: str = "--output_dir", also_written_by: Iterable[str] = ()) -> None:
        from siren.io import check_output_name

        self.folder = Path(folder)
        self.names = None if names is None else tuple(dict.fromkeys([*names, MANIFEST_NAME]))
        for name in self.names or ():
            check_output_name(name)
        self.script = script
        self.inputs = [Path(p) for p in inputs if p is not None]
        self.overwrite = overwrite
        self.flag = flag
        # Scripts whose outputs --overwrite may replace: this one, and another spelling of the stage
        # (stage 3's two backends write the same model folder).
        self.owners = {Path(script).name, *(Path(s).name for s in also_written_by)}
        self._held = False

    @property
    def whole_folder(self) -> bool:
        return self.names is None

    def check(self) -> StageOutputs:
        """Before any work, on every process; changes nothing (see the module doc)."""
        from siren.io import check_output_clear_of_inputs, check_output_folder

        check_output_clear_of_inputs(self.folder, self.inputs, self.flag)
        self._check_owner()
        if self.whole_folder:
            check_output_folder(self.folder.parent, [self.folder.name], self.overwrite)
        else:
            check_output_folder(self.folder, self.names, self.overwrite)
        return self

    def _check_owner(self) -> None:
        manifest = self.folder / MANIFEST_NAME
        if not manifest.is_file():
            return
        try:
            recorded = read_manifest(self.folder)
        except SirenError:
            recorded = None
        script = manifest_script(recorded) if isinstance(recorded, dict) else ""
        if script and script not in self.owners:
            raise SirenError(f"output folder {self.folder} holds the outputs of {script} (its {MANIFEST_NAME}); "
                             f"{Path(self.script).name} never replaces another stage's files, with or without "
                             f"--overwrite: choose another {self.flag}")

    @contextlib.contextmanager
    def claimed(self, state=None) -> Iterator[StageOutputs]:
        """Hold the output folder while the stage runs and writes (`claimed_folder`)."""
        with claimed_folder(self.folder, state, self.flag):
            self._held = True
            try:
                yield self
            finally:
                self._held = False

    def final_paths(self) -> list[Path]:
        """The outputs' paths once committed, manifest.json aside."""
        if self.whole_folder:
            return [self.folder]
        return [self.folder / name for name in self.names if name != MANIFEST_NAME]

    @contextlib.contextmanager
    def commit(self, args: Any, timer=None) -> Iterator[StagedOutputs]:
        """Stage the outputs; when the block ends, write manifest.json (script, `args`, the inputs'
        sizes, the outputs, what `staged.record` gave, `timer.seconds`) and move all into place.
        A block that fails leaves nothing (and the finished outputs of an earlier run as they were)."""
        from siren.io import atomic_outputs, atomic_path

        if not self._held:
            raise SirenError(f"internal error: {self.script} commits {self.folder} without holding it (claimed())")
        self._check_owner()  # again: the run may have taken hours

        def finish(staged: StagedOutputs) -> None:
            undeclared = sorted({p.name for p in staged.dir.iterdir()} - set(self.names or ()))
            if self.names is not None and undeclared:
                raise SirenError(f"internal error: {self.script} wrote {', '.join(undeclared)}, which it does not "
                                 "declare as outputs")
            write_manifest(staged.dir, script=self.script, args=args, inputs=self.inputs, outputs=self.final_paths(),
                           counts=staged.counts, seconds=None if timer is None else timer.seconds, extra=staged.extra)

        if self.whole_folder:
            from siren.io import check_output_folder

            check_output_folder(self.folder.parent, [self.folder.name], self.overwrite)
            with atomic_path(self.folder) as tmp:
                tmp.mkdir()
                staged = StagedOutputs(self, tmp)
                yield staged
                finish(staged)
            return
        with atomic_outputs(self.folder, self.names, overwrite=self.overwrite) as group:
            staged = StagedOutputs(self, group.dir)
            yield staged
            finish(staged)
