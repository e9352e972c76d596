"""Run DVC commands on the project repository one at a time.

DVC refuses a second command on a repository while one runs ("Unable to acquire lock"), so
a flow run that calls ``dvc repro`` while another does would fail for no reason of its own.
Every DVC call the project makes goes through :func:`run_dvc`, which first takes an
exclusive file lock (``.dvc/tmp/faces-dvc.lock``) and waits for it, so runs queue up
instead of failing. :func:`dvc_lock_state` tells whether DVC's own lock is held, and by
which process, for ``faces doctor``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from faces_core.files import flock_wait

LOCK_NAME = "faces-dvc.lock"
"""Our queueing lock, beside DVC's own ``lock`` and ``rwlock`` in ``.dvc/tmp``."""


class DvcBusyError(TimeoutError):
    """Another DVC command held the repository longer than we were willing to wait."""


class DvcNotFoundError(FileNotFoundError):
    """No ``dvc`` executable, or the directory is not a DVC repository."""


def dvc_executable() -> str:
    """``dvc`` beside the running Python (the project's venv), else the one on PATH.

    Raises:
        DvcNotFoundError: Neither exists.
    """
    beside = Path(sys.executable).with_name("dvc")
    if beside.is_file():
        return str(beside)
    found = shutil.which("dvc")
    if found is None:
        raise DvcNotFoundError("no `dvc` executable: install the project (`make install`) or `pip install dvc`")
    return found


@contextlib.contextmanager
def repo_lock(root: str | os.PathLike[str], wait_s: float) -> Iterator[Path]:
    """Hold the project's DVC lock, waiting up to ``wait_s`` seconds for another holder.

    An flock dies with its process, so a killed run never leaves the repository locked.

    Raises:
        DvcNotFoundError: ``root`` has no ``.dvc`` directory.
        DvcBusyError: The lock stayed taken for ``wait_s`` seconds.
    """
    dvc_dir = Path(root) / ".dvc"
    if not dvc_dir.is_dir():
        raise DvcNotFoundError(f"{Path(root).resolve()} is not a DVC repository (no .dvc/): run from the project root")
    (dvc_dir / "tmp").mkdir(exist_ok=True)
    path = dvc_dir / "tmp" / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if not flock_wait(fd, wait_s, poll_s=0.5):
            raise DvcBusyError(
                f"another DVC command on {Path(root).resolve()} held {path} for {wait_s:g} s; "
                "wait for it (see `faces doctor`) or raise serve.dvc_lock_wait_s in params.yaml"
            )
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield path
    finally:
        os.close(fd)  # closing drops the flock


def run_dvc(
    args: Sequence[str],
    root: str | os.PathLike[str] = ".",
    wait_s: float = 600.0,
    on_line: Callable[[str], None] | None = None,
    env: dict[str, str] | None = None,
) -> tuple[int, str]:
    """Run ``dvc <args>`` in ``root`` under :func:`repo_lock`; stream and return its output.

    Args:
        args: Arguments after ``dvc``, e.g. ``["repro"]``.
        root: The repository root (where dvc.yaml is).
        wait_s: How long to wait for another DVC call of ours.
        on_line: Called with each output line (stdout and stderr merged) as it comes.
        env: Environment of the command (default: this process's). The venv's ``bin`` is put
            first on PATH so a stage's ``python`` is the project's Python.

    Returns:
        (exit status, the whole output).
    """
    env = dict(os.environ if env is None else env)
    bin_dir = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([bin_dir, *(p for p in env.get("PATH", "").split(os.pathsep) if p != bin_dir)])
    lines: list[str] = []
    with (
        repo_lock(root, wait_s),
        subprocess.Popen(
            [dvc_executable(), *args],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
        ) as proc,
    ):
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            if on_line is not None:
                on_line(line.rstrip("\n"))
        rc = proc.wait()
    return rc, "".join(lines)


def stages_run(output: str) -> list[str]:
    """Stages a ``dvc repro`` output says it ran (``Running stage 'train':``), in order."""
    ran = []
    for line in output.splitlines():
        if line.startswith("Running stage '"):
            ran.append(line.split("'")[1])
    return ran


@dataclass(frozen=True)
class LockState:
    """Who holds DVC's locks on a repository.

    Attributes:
        held: DVC's repository lock (``.dvc/tmp/lock``) is taken right now.
        pid: Process id written in that lock file, when readable.
        ours_held: Our queueing lock (:data:`LOCK_NAME`) is taken.
        ours_pid: Its holder's process id, when readable.
    """

    held: bool
    pid: int | None
    ours_held: bool
    ours_pid: int | None


def _probe(path: Path) -> tuple[bool, int | None]:
    if not path.exists():
        return False, None
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False, None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(fd, fcntl.LOCK_UN)
            held = False
        except BlockingIOError:
            held = True
        text = path.read_text(errors="replace").strip().split()
        pid = int(text[0]) if text and text[0].isdigit() else None
        return held, pid
    finally:
        os.close(fd)


def dvc_lock_state(root: str | os.PathLike[str]) -> LockState:
    """Probe DVC's lock (zc.lockfile: an flock on ``.dvc/tmp/lock``) and ours without taking them."""
    tmp = Path(root) / ".dvc" / "tmp"
    held, pid = _probe(tmp / "lock")
    ours_held, ours_pid = _probe(tmp / LOCK_NAME)
    return LockState(held=held, pid=pid, ours_held=ours_held, ours_pid=ours_pid)
