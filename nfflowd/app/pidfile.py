"""The pidfile: one running nfflowd per pidfile (``PidFile``, held with an
exclusive flock for the daemon's life), and the other side's questions
(``running_pid``, ``stop``): is the process the pidfile names alive, and is
it the daemon.  Files are opened without following links and used only if
ours, as the directory may be a user's.
"""

from __future__ import annotations

import fcntl
import os
import signal
import stat
import tempfile
import time

from nfflowd.errors import NfflowdError

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
        fd = _open_checked(path, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return None
    try:
        text = os.read(fd, 64).decode(errors="replace")
    except OSError as e:
        raise PidFileError(f"{path}: cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)
    text = text.strip()
    if not text.isdigit():
        return None
    pid = int(text)
    return pid if 0 < pid < 2**22 + 1 else None


def _open_checked(path, flags: int, mode: int = 0o644, owner: int | None = None) -> int:
    """Open ``path`` without following a symbolic link (nor blocking on a
    FIFO); the descriptor if it is a regular file with a single link (and,
    with ``owner``, owned by that uid), else PidFileError.
    FileNotFoundError and NotADirectoryError pass through."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, mode)
    except (FileNotFoundError, NotADirectoryError):
        raise
    except OSError as e:
        if os.path.islink(path):
            raise PidFileError(f"{path}: is a symbolic link; not following it") from None
        raise PidFileError(f"{path}: cannot open: {e.strerror or e}") from None
    st = os.fstat(fd)
    why = None
    if not stat.S_ISREG(st.st_mode):
        why = "not a regular file"
    elif st.st_nlink != 1:
        why = f"a regular file with {st.st_nlink} links"
    elif owner is not None and st.st_uid != owner:
        why = f"owned by uid {st.st_uid}, not {owner}"
    if why:
        os.close(fd)
        raise PidFileError(f"{path}: {why}; not using it as the pidfile")
    return fd


def _uids(pid: int) -> tuple[int, int] | None:
    """(real, effective) uid of a process, None if gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("Uid:"):
                    real, eff = line.split()[1:3]
                    return int(real), int(eff)
    except (OSError, ValueError):
        pass
    return None


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


def lock_holders(st: os.stat_result) -> list[tuple[int, str]]:
    """(pid, "WRITE" or "READ") of each flock held on the file whose stat is
    ``st``, from /proc/locks (which, unlike trying the lock, cannot disturb a
    daemon taking it)."""
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    dev = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    out = []
    for line in lines:
        parts = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:1f:5678 0 EOF" ("->" marks waiters)
        if len(parts) >= 6 and parts[1] == "FLOCK" and parts[2] != "->" \
                and parts[5] == dev and parts[4].isdigit():
            out.append((int(parts[4]), parts[3]))
    return out


def lock_holder(path) -> int | None:
    """The pid holding a flock on the file; None if unlocked."""
    try:
        holders = lock_holders(os.stat(path))
    except OSError:
        return None
    return holders[0][0] if holders else None


def _our_lock(st: os.stat_result, pid: int) -> bool:
    """Whether ``pid`` holds the only lock on the file, exclusive, as our
    user: as a daemon does (anyone who can read the file can lock it)."""
    return lock_holders(st) == [(pid, "WRITE")] and _uids(pid) == (os.geteuid(),) * 2


def _listening(path, pid: int) -> bool:
    """Whether ``pid`` is the daemon on the control socket next to ``path``."""
    from nfflowd.app.control import ControlError, peer_pid, socket_path
    try:
        return peer_pid(socket_path(str(path))) == pid
    except ControlError:
        return False


def running_pid(path) -> int | None:
    """The pid in the pidfile if that process is alive and is the daemon:
    it holds the pidfile's lock as our user, or it listens on the control
    socket next to the pidfile (SO_PEERCRED, ``control.peer_pid``); None
    when there is no pidfile or it is stale.  A command line that merely
    looks like nfflowd (``nfflowd meter -i``) is not enough."""
    pid = read_pid(path)
    if pid is None or not _alive(pid):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    if _our_lock(st, pid) or _listening(path, pid):
        return pid
    return None


class PidFile:
    """An exclusive, flock-held pidfile.  ``with PidFile(path):`` or give it
    to ``DaemonContext(pidfile=PidFile(path))``, which enters it in the
    detached process (the pid written is the daemon's) and exits it on
    close.  A second nfflowd fails to take the lock and is refused with the
    running pid named; the lock dies with the process, so a pidfile left by
    a crash (or a kill -9) is never taken for a running daemon.  On exit the
    file is removed.

    The file is opened without following a symbolic link and used only if
    it is a regular file owned by us: in a directory some user owns
    (``/run/nfflowd/`` for ``user:``), a planted link would otherwise have
    root truncate its target.  Any user who can read the file can flock it
    too; such a lock (a process that is not ours, or a shared lock) does not
    block ``start``: the file is replaced by a new one, created under a
    temporary name (mode 0600), locked and written before it is renamed into
    place."""

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
                fd = _open_checked(self.path, os.O_RDWR, owner=os.geteuid())
            except (FileNotFoundError, NotADirectoryError):
                self._create()
                return
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                st = os.fstat(fd)
                os.close(fd)
                pid = read_pid(self.path)
                if pid is not None and (_our_lock(st, pid) or _listening(self.path, pid)):
                    raise AlreadyRunning(self.path, pid) from None
                # locked by someone else (anyone can flock a file they can
                # read): not a daemon of ours; replace the file
                self._create()
                return
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
            pid = read_pid(self.path)
            if pid is not None and pid != os.getpid() and _alive(pid) \
                    and _listening(self.path, pid):
                os.close(fd)        # a daemon that has let the lock go (user:)
                raise AlreadyRunning(self.path, pid)
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

    def _create(self) -> None:
        """A new pidfile: written and locked under a temporary name that only
        we can open (mode 0600), then given its mode and renamed into place,
        so that it is never at the path unlocked (rename replaces a stale
        file, or a link, not what it points to)."""
        directory, base = os.path.split(os.path.abspath(self.path))
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{base}.", dir=directory)
        except OSError as e:
            raise PidFileError(f"{self.path}: cannot create: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.write(fd, f"{os.getpid()}\n".encode())
            os.fsync(fd)
            os.fchmod(fd, self.mode)
            os.rename(tmp, self.path)
        except OSError as e:
            os.close(fd)
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise PidFileError(f"{self.path}: cannot create: {e.strerror or e}") from None
        self._fd = fd

    def close(self) -> None:
        """Let the file go without removing it: its descriptor closes and the
        lock with it.  For a daemon that drops root (``user:``), which could
        not remove the file anyway; the control socket names it from then on,
        and ``stop`` removes the file."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

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
    ``timeout`` seconds for it to exit.  Only a process that both the
    pidfile and the control socket next to it name (SO_PEERCRED) is
    signalled, through a pidfd (a pid reused meanwhile is not hit).
    Returns (status, message) with status one of STOPPED, NOT_RUNNING,
    TIMEOUT, FAILED."""
    from nfflowd.app.control import ControlError, NotRunning, peer_pid, socket_path
    pid = read_pid(path)
    if pid is None:
        return NOT_RUNNING, f"nfflowd is not running (no pid in {path})"
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        pidfd = None
    try:
        if pidfd is None or not _alive(pid):
            _remove_stale(path, pid)
            return NOT_RUNNING, f"nfflowd is not running (stale pidfile {path}: pid {pid})"
        sock = socket_path(str(path))
        try:
            listener = peer_pid(sock)
        except NotRunning:
            listener = None
        except ControlError as e:
            return FAILED, f"not signalling pid {pid}: {e}"
        if listener is None:
            st = os.stat(path)
            if _our_lock(st, pid):
                return FAILED, (f"nfflowd (pid {pid}) holds {path} but does not listen on "
                                f"{sock} (still starting?); not signalling it")
            _remove_stale(path, pid)
            return NOT_RUNNING, f"nfflowd is not running (stale pidfile {path}: pid {pid})"
        if listener != pid:
            return FAILED, (f"{path} names pid {pid}, but the daemon on {sock} is pid "
                            f"{listener}; not signalling either")
        try:
            signal.pidfd_send_signal(pidfd, sig)
        except ProcessLookupError:
            return NOT_RUNNING, f"nfflowd is not running (pid {pid} exited)"
        except PermissionError:
            return FAILED, f"cannot signal nfflowd (pid {pid}): permission denied"
        deadline = time.monotonic() + timeout
        while True:
            if not _alive(pid):
                _remove_stale(path, pid)    # a daemon that dropped root could not
                return STOPPED, f"nfflowd (pid {pid}) stopped"
            if time.monotonic() >= deadline:
                return TIMEOUT, (f"nfflowd (pid {pid}) is still running {timeout:g} s after "
                                 f"{signal.Signals(sig).name}; kill -KILL {pid} would stop it "
                                 "without flushing")
            time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
    finally:
        if pidfd is not None:
            os.close(pidfd)


def _remove_stale(path, pid) -> None:
    """Remove a stale pidfile naming ``pid``, unless a daemon holds its lock
    (a lock anyone else holds does not keep it)."""
    try:
        st = os.lstat(path)
        holders = lock_holders(st)
        if holders and _our_lock(st, holders[0][0]):
            return
        if read_pid(path) == pid:
            os.unlink(path)
    except (OSError, PidFileError):
        pass
