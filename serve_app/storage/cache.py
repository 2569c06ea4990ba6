"""The node's cache of versions downloaded from an object store (``serve_app.storage.store.fetch``).

- **Private.** The cache directory is ``$RAY_TFSERVING_CACHE``, else ``<tmp>/rtfs-cache-<uid>``,
  created 0700. One that exists must be a directory (not a symlink) owned by this process's
  user and writable by no one else: otherwise a configured one is refused with the reason, and
  the default one is replaced by a fresh private directory for this process (someone else
  made it first).
- **Nothing written outside it.** Every object name of a version is checked before a byte is
  downloaded (``relative_path``): no absolute name, no ``..``, no empty or ``.`` part, no NUL;
  a name that fails refuses the version.
- **Partial downloads** (``.tmp-*``, left by a process that died mid-download) are deleted the
  first time a process uses the cache; a download in progress holds a lock on its directory,
  so another process's is never touched.
- **Bounded.** Each version a process serves holds a shared ``flock`` on its entry (``hold``,
  ``release``); beyond ``max_bytes``, the least recently used entries no process holds are
  deleted (``evict``), when a version is fetched and when one is released.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import stat
import tempfile
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

logger = logging.getLogger("ray.serve")

ENV = "RAY_TFSERVING_CACHE"
"""Where the cache is; unset: ``<tmp>/rtfs-cache-<uid>``."""
DEFAULT_MAX_BYTES = 10240 << 20
"""``--object_store_cache_max_mb``'s default."""
COMPLETE = ".complete"
"""Written last into a cached version; a cache entry without it is not used. Touched at each
use: its mtime orders the entries for eviction."""
TMP = ".tmp-"
TRASH = ".evict-"

_lock = threading.Lock()
_roots: dict[str, Path] = {}
"""Configured cache path -> the directory this process uses for it (cleaned once)."""
_held: dict[Path, list[int]] = {}
"""Entry -> [the fd holding its shared lock, how many holds]."""
_limits: dict[Path, int] = {}
"""Cache directory -> the last size bound asked for (eviction on release)."""


def root() -> Path:
    """This process's cache directory: private, checked, and cleaned of partial downloads the
    first time. ``PermissionError`` when ``$RAY_TFSERVING_CACHE`` is not private."""
    configured = os.environ.get(ENV) or ""
    with _lock:
        chosen = _roots.get(configured)
        if chosen is None or not chosen.is_dir():  # first use, or deleted since
            chosen = _roots[configured] = _private(configured)
            _clean(chosen)
        return chosen


def _private(configured: str) -> Path:
    path = (
        Path(configured)
        if configured
        else Path(tempfile.gettempdir()) / f"rtfs-cache-{os.getuid()}"
    )
    try:
        return check_private(path)
    except PermissionError as e:
        if configured:
            raise
        fresh = Path(tempfile.mkdtemp(prefix=f"rtfs-cache-{os.getuid()}-"))
        logger.warning("%s; this process caches in %s instead", e, fresh)
        return fresh


def check_private(path: Path) -> Path:
    """``path``, made a 0700 directory if missing; ``PermissionError`` if it is not a directory
    of this user's that no one else may write."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = os.lstat(path)
    why = ""
    if not stat.S_ISDIR(info.st_mode):
        why = "is not a directory (a symlink?)"
    elif info.st_uid != os.getuid():
        why = f"belongs to uid {info.st_uid}, not to this server's user (uid {os.getuid()})"
    elif info.st_mode & 0o022:
        why = f"may be written by group or others (mode {stat.S_IMODE(info.st_mode):o})"
    if why:
        raise PermissionError(
            f"The object-store cache {path} {why}: it must be private to the server's user "
            f"(a 0700 directory of its own; set ${ENV} to another path)"
        )
    return path


def _clean(directory: Path) -> None:
    """Delete partial downloads and half-evicted entries no live process works on."""
    for p in directory.iterdir():
        if p.name.startswith((TMP, TRASH)):
            fd = _lock_dir(p, fcntl.LOCK_EX)
            if fd is not None:
                shutil.rmtree(p, ignore_errors=True)
                os.close(fd)
                logger.info("Object-store cache: deleted the partial download %s", p.name)


def relative_path(name: str) -> str | None:
    """An object's name relative to its version, checked: None for a folder marker (a name
    ending in ``/``: nothing to write), else the name; ``ValueError`` for one that could be
    written outside the version's directory (absolute, ``..``, an empty or ``.`` part, NUL)
    or is the cache's own marker."""
    if name.endswith("/"):
        return None
    if (
        not name
        or PurePosixPath(name).is_absolute()
        or "\0" in name
        or any(part in ("", ".", "..") for part in name.split("/"))
        or name == COMPLETE
    ):
        raise ValueError(f"object name {name!r} is not a plain relative path")
    return name


def _lock_dir(path: Path, kind: int) -> int | None:
    """An fd holding ``flock(kind)`` on the directory ``path``; None when another holds a lock
    that conflicts, or it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, kind | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def hold(entry: Path) -> bool:
    """Take a hold on a complete cached version (no process evicts it until ``release``), and
    mark it used now; False when it is not there (or being evicted)."""
    with _lock:
        if entry in _held:
            _held[entry][1] += 1
            _touch(entry)
            return True
    fd = _lock_dir(entry, fcntl.LOCK_SH)
    if fd is None:
        return False
    try:
        same = os.fstat(fd).st_ino == os.stat(entry).st_ino and (entry / COMPLETE).is_file()
    except OSError:
        same = False
    if not same:  # evicted between the open and the lock
        os.close(fd)
        return False
    _adopt(entry, fd)
    return True


def _adopt(entry: Path, fd: int) -> None:
    with _lock:
        if entry in _held:
            os.close(fd)
            _held[entry][1] += 1
        else:
            _held[entry] = [fd, 1]
        _touch(entry)


def _touch(entry: Path) -> None:
    with contextlib.suppress(OSError):
        os.utime(entry / COMPLETE)


def release(entry: Path) -> None:
    """Give back a hold of ``hold`` or ``publish``; the entry may be evicted once none is left."""
    with _lock:
        held = _held.get(entry)
        if held is None:
            return
        held[1] -= 1
        if held[1] > 0:
            return
        del _held[entry]
        os.close(held[0])
        limit = _limits.get(entry.parent)
    if limit is not None:
        evict(entry.parent, limit)


@contextlib.contextmanager
def staging(directory: Path, key: str) -> Iterator[tuple[Path, int]]:
    """A fresh private directory to download into, locked (``_clean`` leaves it alone); deleted
    on the way out unless ``publish`` moved it into place."""
    tmp = directory / f"{TMP}{key}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir(mode=0o700)
    fd = _lock_dir(tmp, fcntl.LOCK_EX)
    if fd is None:
        raise OSError(f"cannot lock {tmp}")
    try:
        yield tmp, fd
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
            with contextlib.suppress(OSError):
                os.close(fd)


def publish(tmp: Path, fd: int, entry: Path, fingerprint: str) -> None:
    """Move a whole download into place, held by this process; another process's copy that
    got there first is used instead."""
    (tmp / COMPLETE).write_text(fingerprint)
    fcntl.flock(fd, fcntl.LOCK_SH)  # from the download's exclusive lock to a hold
    try:
        os.rename(tmp, entry)
    except OSError:  # another replica on this node was first
        shutil.rmtree(tmp, ignore_errors=True)
        os.close(fd)
        if not hold(entry):
            raise
        return
    _adopt(entry, fd)


def _size(path: Path) -> int:
    total = 0
    for parent, _, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(parent, f)).st_size
    return total


def _last_used(entry: Path) -> float:
    try:
        return (entry / COMPLETE).stat().st_mtime
    except OSError:
        return entry.stat().st_mtime


def evict(directory: Path, max_bytes: int) -> list[str]:
    """Delete the least recently used entries that no process holds until the cache is within
    ``max_bytes`` (or only held ones are left); the names deleted."""
    with _lock:
        _limits[directory] = max_bytes
        held = set(_held)
    entries = []
    for p in directory.iterdir():
        if not p.name.startswith(".") and p.is_dir() and not p.is_symlink():
            with contextlib.suppress(OSError):
                entries.append((_last_used(p), p, _size(p)))
    total = sum(size for _, _, size in entries)
    evicted = []
    for _, p, size in sorted(entries):
        if total <= max_bytes:
            break
        if p in held:
            continue
        fd = _lock_dir(p, fcntl.LOCK_EX)
        if fd is None:  # another process serves it
            continue
        trash = directory / f"{TRASH}{p.name}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(p, trash)
        except OSError:
            os.close(fd)
            continue
        os.close(fd)
        shutil.rmtree(trash, ignore_errors=True)
        total -= size
        evicted.append(p.name)
        logger.info(
            "Object-store cache: evicted %s (%.1f MB; %.1f MB left, bound %.1f MB)",
            p.name,
            size / 2**20,
            total / 2**20,
            max_bytes / 2**20,
        )
    return evicted
