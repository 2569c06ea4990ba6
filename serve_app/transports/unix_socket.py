"""TF Serving's ``--grpc_socket_path``: the gRPC API on a Unix domain socket, served by every
serving replica of the node.

A Unix socket has no ``SO_REUSEPORT``: one path names one listening socket. So each serving
replica's gRPC server listens on a socket of its own beside the path
(``.<name>.<pid>.sock``) and publishes it at the path: a hard link made under a temporary name
and renamed over the path, which is atomic, and a client connecting through the link reaches
the replica's socket (the kernel finds a Unix socket by its inode). A watchdog in every replica
checks five times a second that the path still accepts connections and, when it does not (the
replica that published it died), publishes its own: a SIGKILLed publisher costs the clients
that were connected to it about a second of failed calls (UNAVAILABLE at once; gRPC's first
reconnect backoff is a second), not the service. A replica that stops removes its socket,
and the path when it is the one published. Sockets left by replicas that were killed are
swept when another publishes.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
from pathlib import Path

logger = logging.getLogger("ray.serve")

WATCH_INTERVAL_S = 0.2
"""How often each replica checks that the published path is served."""

_DEAD = (errno.ECONNREFUSED, errno.ENOENT)
"""What connecting to a path that nobody serves fails with."""


class UnixSocket:
    """The socket one serving replica listens on, and its share in publishing the path."""

    def __init__(self, path: str | os.PathLike[str], pid: int | None = None) -> None:
        self.path = Path(path)
        self.pid = os.getpid() if pid is None else pid
        self.private = self.path.with_name(f".{self.path.name}.{self.pid}.sock")
        """This replica's own socket: what its gRPC server binds."""
        self._inode: int | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def address(self) -> str:
        """gRPC's address of this replica's own socket (``unix:<absolute path>``)."""
        return f"unix:{self.private}"

    def bound(self) -> None:
        """The gRPC server has bound ``private``: note its inode (to know the path for ours)."""
        self._inode = os.stat(self.private).st_ino

    def served(self) -> bool:
        """Whether the path accepts connections now (a busy server counts as serving)."""
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        probe.settimeout(WATCH_INTERVAL_S)
        try:
            probe.connect(str(self.path))
        except OSError as e:
            return e.errno not in _DEAD
        finally:
            probe.close()
        return True

    def publish(self) -> None:
        """Make the path name this replica's socket, atomically; sweep killed replicas'."""
        link = self.private.with_suffix(".link")
        with contextlib.suppress(FileNotFoundError):
            link.unlink()
        os.link(self.private, link)
        os.replace(link, self.path)
        logger.info("gRPC on the Unix socket %s is served by this replica", self.path)
        self._sweep()

    def _sweep(self) -> None:
        for stale in self.path.parent.glob(f".{self.path.name}.*.sock"):
            pid = stale.name.rsplit(".", 2)[-2]
            if pid.isdigit() and int(pid) != self.pid and not _alive(int(pid)):
                with contextlib.suppress(OSError):
                    stale.unlink()

    def start(self) -> None:
        """Publish the path unless it is served, then keep it served (the watchdog)."""
        if not self.served():
            self.publish()
        self._task = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(WATCH_INTERVAL_S)
            try:
                if not await asyncio.to_thread(self.served):
                    self.publish()
            except OSError as e:  # the directory gone or unwritable: say so, keep trying
                logger.warning("Cannot publish the gRPC Unix socket %s: %s", self.path, e)

    def remove(self) -> None:
        """Stop watching; remove this replica's socket, and the path when it names it."""
        if self._task is not None:
            self._task.cancel()
        with contextlib.suppress(OSError):
            if self._inode is not None and os.stat(self.path).st_ino == self._inode:
                self.path.unlink()
        with contextlib.suppress(OSError):
            self.private.unlink()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True
