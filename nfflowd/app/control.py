"""The control socket: ``check``, ``reload`` and ``stop`` ask the running
daemon for its state over a unix socket next to the pidfile.  One request
line, one JSON answer.  Both sides check the other's credentials
(SO_PEERCRED): the daemon answers only root or its own user; a client
believes only a listener running as root or as itself.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import time

from nfflowd.errors import NfflowdError, printable

MAX_REQUEST = 256
MAX_ANSWER = 16 * 1024 * 1024
REQUESTS = ("status",)


class ControlError(NfflowdError):
    """The control socket could not be used."""


class NotRunning(ControlError):
    """No daemon answers on the control socket."""


class ControlPermissionError(ControlError):
    """The control socket exists, but this user may not use it."""


def socket_path(pidfile: str) -> str:
    """``/run/nfflowd.pid`` -> ``/run/nfflowd.sock``."""
    base = pidfile[:-4] if pidfile.endswith(".pid") else pidfile
    return base + ".sock"


class Impostor(ControlError):
    """Something that is not nfflowd's daemon owns or listens on the path."""


def _peer(conn: socket.socket) -> tuple[int, int] | None:
    """(pid, uid) of the process at the other end, None if unknown."""
    try:
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except OSError:
        return None
    pid, uid, _gid = struct.unpack("3i", creds)
    return pid, uid


def _peer_uid(conn: socket.socket) -> int | None:
    peer = _peer(conn)
    return None if peer is None else peer[1]


def _trusted() -> tuple[int, ...]:
    """The uids a daemon's control socket may belong to: root, or us."""
    return (0, os.geteuid())


def _check_file(path: str) -> None:
    """The socket file's owner and mode (NotRunning if there is none)."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        raise NotRunning(f"nfflowd is not running (no control socket {path})") from None
    except OSError as e:
        raise ControlError(f"{path}: {e.strerror or e}") from None
    if not stat.S_ISSOCK(st.st_mode):
        raise Impostor(f"{path}: not a socket; not nfflowd's control socket")
    if st.st_uid not in _trusted():
        raise Impostor(f"{path}: owned by uid {st.st_uid}, not root; "
                       "not nfflowd's control socket")
    if st.st_mode & 0o022:
        raise Impostor(f"{path}: writable by others (mode {st.st_mode & 0o777:04o}); "
                       "not nfflowd's control socket")


class ControlServer:
    """Listens on ``path``; ``get_state()`` returns the JSON-serialisable dict
    answered to ``status`` (values that JSON cannot hold are sent as str)::

        -> status\n
        <- {"pid": 1234, "uptime": 12.5, "counters": {...}}\n

    The socket is mode 0600, and only peers running as root or as the
    daemon's own user are answered.  No thread of its own: the daemon adds
    ``fileno()`` to its ``select`` read list and calls ``handle_ready()``
    when it is readable.  Each connection is served with short timeouts (a
    client that sends nothing costs the loop at most ``timeout`` seconds), a
    bounded request size and a bounded number of connections per call."""

    def __init__(self, path: str, get_state, timeout: float = 0.2, backlog: int = 8):
        self.path = str(path)
        self.get_state = get_state
        self.timeout = timeout
        self.served = 0
        self.refused = 0
        self.errors = 0
        self._uid = os.geteuid()
        self._remove_stale()
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            # Before bind, so that the file never exists with looser permissions.
            os.fchmod(s.fileno(), 0o600)
            s.bind(self.path)
            os.chmod(self.path, 0o600)
            s.listen(backlog)
            s.setblocking(False)
        except OSError as e:
            s.close()
            raise ControlError(f"{self.path}: cannot create the control socket: "
                               f"{e.strerror or e}") from None
        self.sock = s
        self._ino = os.stat(self.path).st_ino

    def _remove_stale(self) -> None:
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return
        except OSError as e:
            raise ControlError(f"{self.path}: {e.strerror or e}") from None
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{self.path}: exists and is not a socket; not replacing it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        probe.settimeout(0.5)
        try:
            probe.connect(self.path)
            peer = _peer(probe)
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # left behind by a daemon that is gone
        except OSError as e:
            raise ControlError(f"{self.path}: cannot check the old socket: "
                               f"{e.strerror or e}") from None
        else:
            if peer is not None and peer[1] in _trusted():
                raise ControlError(f"{self.path}: another process is listening on it "
                                   f"(pid {peer[0]}; is nfflowd already running?)")
            # a listener that is not root's cannot be a daemon: replaced
        finally:
            probe.close()
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass

    def fileno(self) -> int:
        return self.sock.fileno()

    def handle_ready(self, max_connections: int = 8) -> int:
        """Serve the connections waiting (at most ``max_connections``);
        returns how many were served.  Never raises for a client's fault."""
        served = 0
        for _ in range(max_connections):
            try:
                conn, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError:
                self.errors += 1
                break
            try:
                self._serve(conn)
                served += 1
            except OSError:
                self.errors += 1
            finally:
                conn.close()
        return served

    def _serve(self, conn: socket.socket) -> None:
        deadline = time.monotonic() + self.timeout
        buf = b""
        while b"\n" not in buf and len(buf) <= MAX_REQUEST:
            left = deadline - time.monotonic()
            if left <= 0:
                return  # a client that does not send a line gets nothing
            conn.settimeout(left)
            try:
                chunk = conn.recv(MAX_REQUEST + 1 - len(buf))
            except socket.timeout:
                return
            if not chunk:
                break
            buf += chunk
        if not buf:
            return  # closed without a request (peer_pid): nothing to answer
        # Answered only once the request is read: closing a unix socket with
        # unread data resets the connection, and the answer would be lost.
        request = buf.split(b"\n", 1)[0].strip().decode("ascii", errors="replace")
        uid = _peer_uid(conn)
        if uid is None or uid not in (0, self._uid):
            self.refused += 1
            answer = {"error": "permission denied"}
        elif request == "status":
            try:
                answer = dict(self.get_state())
            except Exception as e:  # noqa: BLE001 - the daemon must go on
                self.errors += 1
                answer = {"error": f"state unavailable: {type(e).__name__}: {e}"}
        else:
            answer = {"error": f"unknown request {request[:40]!r}; "
                               f"expected one of: {', '.join(REQUESTS)}"}
        conn.settimeout(max(self.timeout, deadline - time.monotonic()))
        conn.sendall(_encode(answer))
        if "error" not in answer or len(answer) > 1:
            self.served += 1

    def close(self) -> None:
        """Close the socket and remove its file (if it is still ours)."""
        sock, self.sock = getattr(self, "sock", None), None
        if sock is None:
            return
        sock.close()
        try:
            if os.stat(self.path).st_ino == self._ino:
                os.unlink(self.path)
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _encode(obj) -> bytes:
    return (json.dumps(obj, default=str, sort_keys=True) + "\n").encode()


def _connect(path: str, timeout: float) -> tuple[socket.socket, int]:
    """A connection to the daemon listening on ``path`` and its pid, after
    checking the file and the listener's credentials: the file must be a
    socket owned by root (or by the user running the client), not writable
    by group or others, and the process listening on it must run as root or
    as that user.  In a directory some user owns, that user could otherwise
    plant a listener that ``check`` would show as the running daemon and
    that ``stop`` would believe.  Answers have control characters escaped
    (``errors.printable``)."""
    _check_file(path)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        s.settimeout(timeout)
        try:
            s.connect(path)
        except FileNotFoundError:
            raise NotRunning(f"nfflowd is not running (no control socket {path})") from None
        except ConnectionRefusedError:
            raise NotRunning(f"nfflowd is not running (nobody listens on {path})") from None
        except PermissionError:
            raise ControlPermissionError(
                f"{path}: permission denied; the control socket is for root only") from None
        except socket.timeout:
            raise ControlError(f"{path}: no answer within {timeout:g} s "
                               "(is nfflowd stuck?)") from None
        except OSError as e:
            raise ControlError(f"{path}: cannot connect: {e.strerror or e}") from None
        peer = _peer(s)
        if peer is None or peer[1] not in _trusted():
            who = "unknown" if peer is None else f"pid {peer[0]}, uid {peer[1]}"
            raise Impostor(f"{path}: the process listening ({who}) is not root; "
                           "not nfflowd's control socket")
    except BaseException:
        s.close()
        raise
    return s, peer[0]


def peer_pid(path: str, timeout: float = 2.0) -> int:
    """The pid of the daemon listening on ``path`` (its credentials checked
    as for ``query``); asks it nothing."""
    s, pid = _connect(str(path), timeout)
    s.close()
    return pid


def query(path: str, timeout: float = 2.0, request: str = "status") -> dict:
    """Ask the daemon listening on ``path``; returns its answer, every
    string's control characters escaped.  Raises NotRunning (no socket,
    nobody listening), ControlPermissionError (not allowed), Impostor (not
    root's) or ControlError (no or bad answer in ``timeout`` seconds)."""
    return query_peer(path, timeout, request)[0]


def query_peer(path: str, timeout: float = 2.0, request: str = "status") -> tuple[dict, int]:
    """``query``, and the pid of the process that answered (SO_PEERCRED)."""
    path = str(path)
    deadline = time.monotonic() + timeout
    s, pid = _connect(path, timeout)
    try:
        data = b""
        try:
            s.sendall(request.encode() + b"\n")
            while not data.endswith(b"\n"):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise socket.timeout
                s.settimeout(left)
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > MAX_ANSWER:
                    raise ControlError(f"{path}: answer larger than {MAX_ANSWER} bytes")
        except socket.timeout:
            raise ControlError(f"{path}: no answer within {timeout:g} s "
                               "(is nfflowd stuck?)") from None
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before reading everything
    finally:
        s.close()
    if not data:
        raise ControlError(f"{path}: the daemon closed the connection without answering")
    try:
        answer = json.loads(data)
    except ValueError:
        raise ControlError(f"{path}: not a JSON answer: {data[:80]!r}") from None
    if not isinstance(answer, dict):
        raise ControlError(f"{path}: unexpected answer: {data[:80]!r}")
    answer = _printable(answer)
    if set(answer) == {"error"}:
        if answer["error"] == "permission denied":
            raise ControlPermissionError(f"{path}: the daemon refused: permission denied")
        raise ControlError(f"{path}: the daemon answered: {answer['error']}")
    return answer, pid


def _printable(obj):
    """A JSON value with every string (keys too) made printable."""
    if isinstance(obj, str):
        return printable(obj)
    if isinstance(obj, dict):
        return {_printable(str(k)): _printable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_printable(v) for v in obj]
    return obj
