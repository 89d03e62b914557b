"""The control socket: a server driven by a bounded select loop in this
process, clients in threads and in a subprocess running as nobody."""

import os
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from nfflowd.app import control
from nfflowd.app.control import ControlError, ControlServer, NotRunning

ROOT = Path(__file__).resolve().parent.parent


def serve_until(server, done, seconds=5.0):
    """The daemon's loop, in miniature: select on the server, bounded."""
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        r, _, _ = select.select([server], [], [], 0.05)
        if r:
            server.handle_ready()


def query_in_thread(path, **kw):
    result = {}

    def run():
        try:
            result["answer"] = control.query(path, **kw)
        except Exception as e:  # noqa: BLE001 - handed to the test
            result["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, result


@pytest.fixture
def sockdir():
    # Not under pytest's 0700 tmp_path: other users must reach the socket
    # itself, so that its own mode is what keeps them out.
    d = tempfile.mkdtemp(prefix="nfflowd-ctl-", dir="/tmp")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def test_socket_path_from_pidfile():
    assert control.socket_path("/run/nfflowd.pid") == "/run/nfflowd.sock"
    assert control.socket_path("/var/run/nf/daemon") == "/var/run/nf/daemon.sock"


def test_status_round_trip_and_mode(sockdir):
    counters = {"events_new": 0}
    calls = []

    def state():
        calls.append(1)
        return {"pid": os.getpid(), "counters": dict(counters), "config": Path("/etc/nfflowd.yaml")}

    path = str(sockdir / "nfflowd.sock")
    with ControlServer(path, state) as server:
        st = os.stat(path)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
        for n in (3, 7):
            counters["events_new"] = n
            t, result = query_in_thread(path)
            serve_until(server, lambda: not t.is_alive())
            t.join(1)
            assert result.get("answer", result)["counters"] == {"events_new": n}
            assert result["answer"]["pid"] == os.getpid()
            assert result["answer"]["config"] == "/etc/nfflowd.yaml"   # not JSON: sent as str
        assert len(calls) == 2 and server.served == 2
    assert not os.path.exists(path)                       # close() removed it


def test_unknown_request_and_state_errors(sockdir):
    path = str(sockdir / "nfflowd.sock")

    def broken():
        raise KeyError("boom")

    with ControlServer(path, broken) as server:
        t, result = query_in_thread(path, request="counters")
        serve_until(server, lambda: not t.is_alive())
        assert isinstance(result["error"], ControlError)
        assert "unknown request" in str(result["error"])
        t, result = query_in_thread(path)
        serve_until(server, lambda: not t.is_alive())
        assert "state unavailable" in str(result["error"]) and "boom" in str(result["error"])
        assert server.errors == 1


def test_a_silent_client_costs_the_loop_at_most_the_timeout(sockdir):
    path = str(sockdir / "nfflowd.sock")
    with ControlServer(path, dict, timeout=0.2) as server:
        silent = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        silent.connect(path)
        try:
            select.select([server], [], [], 2)
            t0 = time.monotonic()
            server.handle_ready()
            assert time.monotonic() - t0 < 0.5
            silent.settimeout(2)
            assert silent.recv(100) == b""                  # closed without an answer
        finally:
            silent.close()
        # and the next client is served
        t, result = query_in_thread(path)
        serve_until(server, lambda: not t.is_alive())
        assert result["answer"] == {}


def test_handle_ready_with_nothing_waiting_returns_at_once(sockdir):
    with ControlServer(str(sockdir / "c.sock"), dict) as server:
        t0 = time.monotonic()
        assert server.handle_ready() == 0
        assert time.monotonic() - t0 < 0.1


def test_client_errors_when_not_running(sockdir):
    path = str(sockdir / "nfflowd.sock")
    with pytest.raises(NotRunning, match="no control socket"):
        control.query(path, timeout=1)
    # a socket file nobody listens on (a daemon that died)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()
    with pytest.raises(NotRunning, match="nobody listens"):
        control.query(path, timeout=1)
    # ... is replaced by the next server
    with ControlServer(path, lambda: {"ok": 1}) as server:
        t, result = query_in_thread(path)
        serve_until(server, lambda: not t.is_alive())
        assert result["answer"] == {"ok": 1}


def test_client_times_out_on_a_stuck_daemon(sockdir):
    path = str(sockdir / "nfflowd.sock")
    with ControlServer(path, dict) as server:      # never served: a stuck loop
        t0 = time.monotonic()
        with pytest.raises(ControlError, match="no answer within"):
            control.query(path, timeout=0.3)
        assert time.monotonic() - t0 < 2
        server.handle_ready()                      # the loop wakes up; nothing breaks


def test_refuses_to_replace_a_live_socket_or_a_file(sockdir):
    path = str(sockdir / "nfflowd.sock")
    with ControlServer(path, dict):
        with pytest.raises(ControlError, match="another process is listening"):
            ControlServer(path, dict)
        assert os.path.exists(path)
    f = sockdir / "plain"
    f.write_text("x")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(str(f), dict)
    assert f.read_text() == "x"


# What the server answers a client running as nobody: a raw connection, so
# that the server's own checks are what is tested (control.query would not
# even connect to a socket that others may write to).
NOBODY_CLIENT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except PermissionError as e:
    print("permission: connect:", e)
    sys.exit()
s.sendall(b"status\n")
data = b""
while not data.endswith(b"\n"):
    chunk = s.recv(4096)
    if not chunk:
        break
    data += chunk
print("permission: refused" if b"permission denied" in data else "answered: " + data.decode())
"""


def run_as_nobody(path):
    if os.geteuid() != 0:
        pytest.skip("needs root to run a client as another user (nobody)")
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) not installed")
    # The project tree may not be readable by nobody: give it a copy.
    lib = tempfile.mkdtemp(prefix="nfflowd-lib-", dir="/tmp")
    try:
        shutil.copytree(ROOT / "nfflowd", Path(lib) / "nfflowd",
                        ignore=shutil.ignore_patterns("__pycache__"))
        for dirpath, dirnames, filenames in os.walk(lib):
            os.chmod(dirpath, 0o755)
            for fn in filenames:
                os.chmod(os.path.join(dirpath, fn), 0o644)
        p = subprocess.run([setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                            sys.executable, "-I", "-c", NOBODY_CLIENT, path, lib],
                           capture_output=True, text=True, timeout=10)
    finally:
        shutil.rmtree(lib, ignore_errors=True)
    if "No module named" in p.stderr or p.returncode != 0:
        pytest.skip(f"cannot run python as nobody here: {p.stderr.strip()[-200:]}")
    return p.stdout.strip()


def served_to_nobody(server, path) -> str:
    """What a client running as nobody got from ``server`` (served meanwhile)."""
    done = []
    t = threading.Thread(target=lambda: done.append(run_as_nobody(path)), daemon=True)
    t.start()
    serve_until(server, lambda: not t.is_alive(), seconds=15)
    t.join(1)
    if not done:
        pytest.skip("the nobody client did not run")
    return done[0]


def test_non_root_users_cannot_connect(sockdir):
    path = str(sockdir / "nfflowd.sock")
    with ControlServer(path, lambda: {"secret": 1}) as server:
        got = served_to_nobody(server, path)
        assert got.startswith("permission:"), got
        assert server.served == 0


def test_peer_credentials_are_checked_even_if_the_mode_is_loosened(sockdir):
    path = str(sockdir / "nfflowd.sock")
    with ControlServer(path, lambda: {"secret": 1}) as server:
        os.chmod(path, 0o666)
        got = served_to_nobody(server, path)
        assert got.startswith("permission:") and "refused" in got, got
        assert server.refused == 1 and server.served == 0


# -- an impostor: a local user listening where the daemon's socket would be --------

# Listens on argv[1] as whoever runs it, answers every client with a
# daemon-like status full of terminal escapes, for at most 15 seconds.
IMPOSTOR = r"""
import json, os, socket, sys, time
path = sys.argv[1]
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(path)
os.chmod(path, 0o600)
s.listen(8)
s.settimeout(0.2)
answer = {"pid": 1, "uptime": 5, "config": "\x1b]0;pwned\x07\x1b[2J/etc/nfflowd.yaml",
          "counters": {"connections_exported\x1b[31m": "\x1b[1mmany\n  forged = 1"}}
print("listening", flush=True)
deadline = time.monotonic() + 15
while time.monotonic() < deadline:
    try:
        c, _ = s.accept()
    except socket.timeout:
        continue
    c.settimeout(1)
    try:
        c.recv(256)
        c.sendall((json.dumps(answer) + "\n").encode())
    except OSError:
        pass
    c.close()
"""


@pytest.fixture
def impostor(tmp_path):
    """(directory nobody owns, the impostor's process) with the impostor
    listening on DIR/nfflowd.sock as nobody."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run a process as nobody")
    d = Path(tempfile.mkdtemp(prefix="nfflowd-user-", dir="/tmp"))
    os.chmod(d, 0o755)
    os.chown(d, 65534, 65534)
    p = subprocess.Popen(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                          sys.executable, "-I", "-c", IMPOSTOR, str(d / "nfflowd.sock")],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline() == "listening\n"
        yield d, p
    finally:
        p.kill()
        p.wait(timeout=5)
        shutil.rmtree(d, ignore_errors=True)


def test_check_does_not_believe_a_users_listener(impostor, capsys):
    """#15 item 8: a listener as nobody was shown as "running (pid 1)", exit
    0, its escapes printed raw."""
    from nfflowd.app.check import daemon_state
    from nfflowd.app.config import parse
    d, _ = impostor
    cfg = parse({"pidfile": str(d / "nfflowd.pid")})
    running = daemon_state(cfg, [])
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out and "forged" not in out, out
    assert "daemon: not running" in out and "running (pid" not in out, out
    assert running is False            # check's exit status 3
    with pytest.raises(ControlError, match="uid 65534"):
        control.query(str(d / "nfflowd.sock"), timeout=2)


def test_a_users_listener_does_not_block_the_daemons_socket(impostor):
    """#15 item 8: start replaces what a user listens on (it cannot be a
    daemon: those are root's), instead of refusing to start."""
    d, _ = impostor
    path = str(d / "nfflowd.sock")
    with ControlServer(path, lambda: {"pid": os.getpid()}) as server:
        assert os.stat(path).st_uid == 0
        t, result = query_in_thread(path)
        serve_until(server, lambda: not t.is_alive())
        assert result.get("answer") == {"pid": os.getpid()}, result

