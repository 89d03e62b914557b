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

from nfflowd import control
from nfflowd.control import ControlError, ControlServer, NotRunning

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


NOBODY_CLIENT = r"""
import sys
sys.path.insert(0, sys.argv[2])
from nfflowd import control
try:
    control.query(sys.argv[1], timeout=2)
except control.ControlPermissionError as e:
    print("permission:", e)
except Exception as e:
    print("other:", type(e).__name__, e)
else:
    print("answered")
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
