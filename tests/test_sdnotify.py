"""sd_notify over a real unix datagram socket (a path in a temp dir, and an
abstract name), and the no-op without NOTIFY_SOCKET."""

import os
import socket

import pytest

from nfflowd.app import sdnotify


def _receiver(address):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(address)
    s.settimeout(2)
    return s


def _fields(datagram: bytes) -> dict:
    return dict(line.split("=", 1) for line in datagram.decode().split("\n"))


def test_ready_status_stopping_reach_a_path_socket(tmp_path, monkeypatch):
    path = str(tmp_path / "notify")
    with _receiver(path) as rx:
        monkeypatch.setenv("NOTIFY_SOCKET", path)
        assert sdnotify.ready("exporting to  127.0.0.1:2055/v5\nnow")
        got = _fields(rx.recv(4096))
        assert got == {"READY": "1", "MAINPID": str(os.getpid()),
                       "STATUS": "exporting to 127.0.0.1:2055/v5 now"}
        assert sdnotify.reloading()
        got = _fields(rx.recv(4096))
        assert got["RELOADING"] == "1" and int(got["MONOTONIC_USEC"]) > 0
        assert sdnotify.stopping()
        assert rx.recv(4096) == b"STOPPING=1"
        assert sdnotify.status("draining")
        assert rx.recv(4096) == b"STATUS=draining"


def test_abstract_socket_name(monkeypatch):
    name = f"nfflowd-test-{os.getpid()}"
    with _receiver(b"\0" + name.encode()) as rx:
        monkeypatch.setenv("NOTIFY_SOCKET", "@" + name)
        assert sdnotify.notify("READY=1")
        assert rx.recv(4096) == b"READY=1"


def test_unset_environment_removes_the_variable(tmp_path):
    path = str(tmp_path / "notify")
    env = {"NOTIFY_SOCKET": path}
    with _receiver(path) as rx:
        assert sdnotify.notify("READY=1", unset_environment=True, environ=env)
        assert rx.recv(4096) == b"READY=1"
    assert "NOTIFY_SOCKET" not in env
    assert not sdnotify.notify("READY=1", environ=env)


def test_no_op_without_notify_socket_and_on_a_dead_socket(tmp_path, monkeypatch):
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert sdnotify.ready() is False
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "nobody-listens"))
    assert sdnotify.ready() is False          # never raises
    monkeypatch.setenv("NOTIFY_SOCKET", "vsock:2:1234")
    assert sdnotify.ready() is False


def test_rejects_malformed_assignments(tmp_path, monkeypatch):
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "n"))
    with pytest.raises(ValueError):
        sdnotify.notify("READY")
    with pytest.raises(ValueError):
        sdnotify.notify("STATUS=a\nREADY=1")
