"""Atomic writes: a reader never sees a half-written file or folder."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_dir(final: str | Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a fresh temporary folder beside ``final``; on success it becomes ``final``.

    On any exception the temporary folder is removed and ``final`` is left as it was,
    so a failed run leaves no partial output behind.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists():
        if not replace:
            shutil.rmtree(tmp, ignore_errors=True)
            raise FileExistsError(final)
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a fresh temporary path ``.NAME.tmp-XXXX`` beside ``path`` for a writer that wants a file name
    (torch.save, faiss.write_index, a NumPy memory map); on success it is renamed to ``path``, on any exception
    removed. Two writers of the same file (two sweeps building one index) each write their own temporary
    file and the last rename wins; a write killed outright leaves its temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


@contextlib.contextmanager
def file_lock(path: str | Path, on_wait: Callable[[], None] | None = None) -> Iterator[None]:
    """An exclusive advisory lock on ``path`` (created if absent) between processes of this machine or of
    nodes sharing a POSIX-locking file system; ``on_wait`` is called once when another process holds it.
    The kernel drops the lock when its holder dies, so a killed process never leaves it stuck."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if on_wait is not None:
                on_wait()
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def try_lock(path: str | Path, *, read_only: bool = False) -> Iterator[bool]:
    """Like :func:`file_lock` but never waits: yields True holding the lock, False when another process holds
    it (then nothing is held). Released on exit, or by the kernel when the holder dies. ``read_only``: open an
    existing ``path`` for reading only (enough to test a lock, and possible in a folder one cannot write).
    A file system without working flock (NFS mounted ``nolock``, some cluster file systems) is an error that
    says so, not a crash: claims need it, and on such a mount they would not exclude another node anyway."""
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "rb" if read_only else "a+b") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        except OSError as e:
            from tcf.errors import TcfError

            raise TcfError(f"cannot lock {path}: {e}; --claim needs file locks (flock) on this file system, "
                           "so use --shard here") from e
        _HELD.add(f.fileno())
        try:
            yield True
        finally:
            _HELD.discard(f.fileno())
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# Locks taken by try_lock are held for a whole run (a sweep's claim), and a flock belongs to the open file,
# which a forked child shares: a worker that outlived a killed holder would keep the run "held" forever.
# Forked children close their copies; the parent's lock stays.  (Exec'd children never get the fd.)
_HELD: set[int] = set()


def _close_held_in_child() -> None:
    for fd in _HELD:
        with contextlib.suppress(OSError):
            os.close(fd)
    _HELD.clear()


os.register_at_fork(after_in_child=_close_held_in_child)
