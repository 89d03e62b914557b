"""The pidfile: one running nfflowd per pidfile, and ``nfflowd stop``.

``PidFile`` is a context manager, so it can be given to python-daemon's
``DaemonContext(pidfile=...)``, which enters it in the detached process (the
pid written is the daemon's) and exits it on close.  While running, the
daemon holds an exclusive ``flock`` on the open pidfile: a second nfflowd
fails to take it and is refused with the running pid named; the lock dies
with the process, so a pidfile left by a crash (or a kill -9) is never
mistaken for a running daemon by ``PidFile``.  On exit the file is removed.

``running_pid`` is for the other side (``stop``, ``check``, ``status``): the
pid in the file, if that process is alive and its command line looks like
nfflowd (a pid reused by another program after a crash is stale).
"""

from __future__ import annotations

import fcntl
import os
import signal
import time

from .errors import NfflowdError

# Results of stop().
STOPPED = "stopped"           # it was running and has exited
NOT_RUNNING = "not-running"   # no pidfile, or a stale one (removed)
TIMEOUT = "timeout"           # still running after the timeout
FAILED = "failed"             # could not be signalled (permission)


class AlreadyRunning(NfflowdError):
    """Another live process holds the pidfile."""

    def __init__(self, path, pid):
        self.path = str(path)
        self.pid = pid
        who = f"pid {pid}" if pid else "another process"
        super().__init__(f"nfflowd is already running ({who}, pidfile {self.path})")


class PidFileError(NfflowdError):
    """The pidfile cannot be created, locked or written."""


def read_pid(path) -> int | None:
    """The pid in the file, or None (no file, empty, not a positive number)."""
    try:
        with open(path) as f:
            text = f.read(64)
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError):
        return None
    except OSError as e:
        raise PidFileError(f"{path}: cannot read: {e.strerror or e}") from None
    text = text.strip()
    if not text.isdigit():
        return None
    pid = int(text)
    return pid if 0 < pid < 2**22 + 1 else None


def _state(pid: int) -> str | None:
    """The process state letter from /proc/PID/stat, None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    # comm is in parentheses and may itself contain ") ".
    return data[data.rfind(b")") + 2:][:1].decode() or None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, belongs to someone else
    state = _state(pid)
    return state is not None and state not in ("Z", "X")  # zombies are dead


def cmdline(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def looks_like_nfflowd(argv: list[str] | None) -> bool:
    """Whether a command line runs nfflowd: ``/usr/local/bin/nfflowd ...``,
    ``python3 [-options] /x/nfflowd ...`` or ``python3 -m nfflowd[.cli] ...``
    (and not, say, ``vim /etc/nfflowd.yaml``)."""
    if not argv:
        return False
    exe = os.path.basename(argv[0])
    if exe == "nfflowd":
        return True
    if not exe.startswith("python"):
        return False
    args = iter(argv[1:])
    for a in args:
        if a == "-m":
            mod = next(args, "")
            return mod == "nfflowd" or mod.startswith("nfflowd.")
        if a in ("-W", "-X"):
            next(args, None)
        elif a == "-c":
            return False
        elif not a.startswith("-"):
            return os.path.basename(a) == "nfflowd"
    return False


def lock_holder(path) -> int | None:
    """The pid holding a flock on the file, from /proc/locks (which, unlike
    trying the lock, cannot disturb a daemon taking it); None if unlocked."""
    try:
        st = os.stat(path)
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF" ("->" marks waiters)
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[2] != "->" \
                and parts[5] == dev and parts[4].isdigit():
            return int(parts[4])
    return None


def running_pid(path) -> int | None:
    """The pid in the pidfile if that process is alive and is an nfflowd
    (its command line names nfflowd, or it holds the pidfile's lock); None
    when there is no pidfile or it is stale."""
    pid = read_pid(path)
    if pid is None or not _alive(pid):
        return None
    if looks_like_nfflowd(cmdline(pid)) or lock_holder(path) == pid:
        return pid
    return None


class PidFile:
    """An exclusive, flock-held pidfile.  ``with PidFile(path):`` or give it
    to ``DaemonContext(pidfile=PidFile(path))``."""

    def __init__(self, path, mode: int = 0o644):
        self.path = str(path)
        self.mode = mode
        self._fd: int | None = None

    @property
    def locked(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        if self._fd is not None:
            raise PidFileError(f"{self.path}: already held by this process")
        for _ in range(10):  # retried only when a dying holder unlinks it under us
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, self.mode)
            except OSError as e:
                raise PidFileError(f"{self.path}: cannot create: {e.strerror or e}") from None
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                pid = read_pid(self.path)
                raise AlreadyRunning(self.path, pid) from None
            except OSError as e:
                os.close(fd)
                raise PidFileError(f"{self.path}: cannot lock: {e.strerror or e}") from None
            # Locked; but is it still the file at that path?
            try:
                same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
            except FileNotFoundError:
                same = False
            if not same:
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                os.write(fd, f"{os.getpid()}\n".encode())
                os.fsync(fd)
            except OSError as e:
                os.close(fd)
                raise PidFileError(f"{self.path}: cannot write: {e.strerror or e}") from None
            self._fd = fd
            return
        raise PidFileError(f"{self.path}: replaced repeatedly while locking")

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        try:
            # Remove it only if it is still ours (same file, our pid).
            if os.stat(self.path).st_ino == os.fstat(fd).st_ino and \
                    read_pid(self.path) == os.getpid():
                os.unlink(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        self.release()
        return False

    def __repr__(self):
        return f"PidFile({self.path!r}, locked={self.locked})"


def stop(path, timeout: float = 30.0, sig: int = signal.SIGTERM,
         poll: float = 0.05) -> tuple[str, str]:
    """Stop the nfflowd named by the pidfile: send ``sig`` and wait up to
    ``timeout`` seconds for it to exit.  Returns (status, message) with
    status one of STOPPED, NOT_RUNNING, TIMEOUT, FAILED."""
    pid = read_pid(path)
    if pid is None:
        return NOT_RUNNING, f"nfflowd is not running (no pid in {path})"
    if running_pid(path) != pid:
        _remove_stale(path, pid)
        return NOT_RUNNING, f"nfflowd is not running (stale pidfile {path}: pid {pid})"
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return NOT_RUNNING, f"nfflowd is not running (pid {pid} exited)"
    except PermissionError:
        return FAILED, f"cannot signal nfflowd (pid {pid}): permission denied"
    deadline = time.monotonic() + timeout
    while True:
        if not _alive(pid):
            return STOPPED, f"nfflowd (pid {pid}) stopped"
        if time.monotonic() >= deadline:
            return TIMEOUT, (f"nfflowd (pid {pid}) is still running {timeout:g} s after "
                             f"{signal.Signals(sig).name}; kill -KILL {pid} would stop it "
                             "without flushing")
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))


def _remove_stale(path, pid) -> None:
    """Remove a stale pidfile, unless some process holds its lock."""
    if lock_holder(path) is not None:
        return
    try:
        if read_pid(path) == pid:
            os.unlink(path)
    except OSError:
        pass
