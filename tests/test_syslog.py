"""The syslog mirror: message format (sans-IO) and the sink over real sockets
(a unix datagram socket bound in a temp dir, UDP on 127.0.0.1)."""

import os
import re
import socket
import time

import pytest

from nfflowd import flowtools
from nfflowd.syslog import SyslogFormatter, SyslogSink, parse_address, pri, timestamp

from test_flowtools import EX_BOOT_MS, EX_NOW_NS, EXAMPLE_CSV, example_flows

T_EXAMPLE = 1248952480      # Thu Jul 30 11:14:40 2009 UTC
T_DAY3 = 1249297200         # Mon Aug  3 11:00:00 2009 UTC


@pytest.fixture
def utc(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize("fac,prio,value", [
    ("local6", "info", 182), ("local0", "err", 131), ("kern", "emerg", 0),
    ("daemon", "debug", 31), (22, 6, 182), ("LOCAL7", "warning", 188)])
def test_pri(fac, prio, value):
    assert pri(fac, prio) == value


@pytest.mark.parametrize("fac,prio", [("local8", "info"), ("local6", "loud"), (24, 6), (1, 8)])
def test_pri_rejects(fac, prio):
    with pytest.raises(ValueError):
        pri(fac, prio)


def test_timestamp(utc):
    assert timestamp(T_EXAMPLE) == "Jul 30 11:14:40"
    assert timestamp(T_DAY3 + 0.9) == "Aug  3 11:00:00"


def test_local_format(utc):
    f = SyslogFormatter("local6", "info", "nfflowd", pid=4321)
    assert f.format(EXAMPLE_CSV[0], T_EXAMPLE + 0.5) == \
        ("<182>Jul 30 11:14:40 nfflowd[4321]: " + EXAMPLE_CSV[0]).encode()
    # The prefix follows the clock.
    assert f.format("x", T_DAY3) == b"<182>Aug  3 11:00:00 nfflowd[4321]: x"


def test_rfc3164_format(utc):
    f = SyslogFormatter("local0", "notice", "flows", pid=7, hostname="gw1")
    assert f.format_many(["a", "b"], T_EXAMPLE) == [
        b"<133>Jul 30 11:14:40 gw1 flows[7]: a", b"<133>Jul 30 11:14:40 gw1 flows[7]: b"]


@pytest.mark.parametrize("address,parsed", [
    ("/dev/log", (socket.AF_UNIX, "/dev/log")),
    ("127.0.0.1:514", (None, ("127.0.0.1", 514))),
    ("[::1]:5514", (None, ("::1", 5514))),
    ("loghost:514", (None, ("loghost", 514))),
])
def test_parse_address(address, parsed):
    assert parse_address(address) == parsed


@pytest.mark.parametrize("address", ["loghost", "loghost:", ":514", "host:0", "host:99999",
                                     "host:x"])
def test_parse_address_rejects(address):
    with pytest.raises(ValueError):
        parse_address(address)


def unix_receiver(path):
    r = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    r.bind(str(path))
    r.settimeout(5)
    return r


LINE_RE = re.compile(rb"^<182>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d nfflowd\[(\d+)\]: (.*)$")


def test_unix_socket_end_to_end(tmp_path):
    path = tmp_path / "log"
    r = unix_receiver(path)
    sink = SyslogSink(str(path))
    recs = flowtools.expand(example_flows(), EX_NOW_NS, EX_BOOT_MS, "172.16.1.1")
    sink.send(flowtools.csv_lines(recs))
    got = [r.recv(65536) for _ in range(3)]
    for msg, line in zip(got, EXAMPLE_CSV):
        m = LINE_RE.match(msg)
        assert m, msg
        assert int(m.group(1)) == os.getpid()
        assert m.group(2) == line.encode()
        assert not msg.endswith(b"\n") and not msg.endswith(b"\0")
    assert sink.sent == 3 and sink.dropped == 0 and sink.send_errors == 0
    sink.close()
    r.close()


def test_missing_socket_is_retried_later(tmp_path):
    path = tmp_path / "log"
    sink = SyslogSink(str(path), ident="t", pid=1)
    sink.send(["one", "two"], now=T_EXAMPLE)     # syslog not running: no raise
    assert sink.unavailable == 1 and sink.sent == 0 and len(sink.backlog) == 2
    sink.flush()
    assert sink.unavailable == 2
    r = unix_receiver(path)                      # syslog starts
    sink.send(["three"], now=T_EXAMPLE)
    got = [r.recv(65536).split(b": ", 1)[1] for _ in range(3)]
    assert got == [b"one", b"two", b"three"]
    assert sink.sent == 3 and not sink.backlog
    # syslogd restarts: the old socket goes, a new one is bound at the same path
    r.close()
    os.unlink(path)
    sink.send(["lost-while-down"], now=T_EXAMPLE)
    assert sink.send_errors >= 1 and len(sink.backlog) == 1
    r = unix_receiver(path)
    sink.flush()
    assert r.recv(65536).endswith(b": lost-while-down")
    sink.close()
    r.close()


def test_backlog_bound_counts_dropped(tmp_path):
    path = tmp_path / "log"
    sink = SyslogSink(str(path), pid=1, backlog=5)
    sink.send([f"l{i}" for i in range(8)], now=T_EXAMPLE)
    assert sink.dropped == 3 and len(sink.backlog) == 5
    r = unix_receiver(path)
    assert sink.flush() == 5
    got = [r.recv(65536).split(b": ", 1)[1] for _ in range(5)]
    assert got == [f"l{i}".encode() for i in range(3, 8)]   # oldest dropped
    sink.close()
    r.close()


def test_full_receiver_keeps_lines_in_backlog(tmp_path):
    """A receiver that does not read: sends hit EAGAIN, nothing blocks or
    raises, and once it reads again every line arrives, in order."""
    path = tmp_path / "log"
    r = unix_receiver(path)
    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sink = SyslogSink(str(path), pid=1)
    n = 3000
    t0 = time.monotonic()
    sink.send([f"{i:06d}" + "x" * 200 for i in range(n)], now=T_EXAMPLE)
    assert time.monotonic() - t0 < 5
    assert 0 < len(sink.backlog) < n and sink.send_errors >= 1 and sink.dropped == 0
    got = []
    r.setblocking(False)
    for _ in range(100_000):                 # bounded
        while True:
            try:
                got.append(r.recv(65536))
            except BlockingIOError:
                break
        if len(got) == n:
            break
        sink.flush()
    assert len(got) == n
    assert [int(g.split(b": ", 1)[1][:6]) for g in got] == list(range(n))
    assert sink.sent == n and not sink.backlog
    sink.close()
    r.close()


def test_udp_rfc3164(utc):
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", 0))
    r.settimeout(5)
    port = r.getsockname()[1]
    sink = SyslogSink(f"127.0.0.1:{port}", "local6", "info", "nfflowd", pid=99, hostname="gw1")
    sink.send([EXAMPLE_CSV[2]], now=T_EXAMPLE)
    assert r.recv(65536) == ("<182>Jul 30 11:14:40 gw1 nfflowd[99]: " + EXAMPLE_CSV[2]).encode()
    sink.close()
    r.close()


def test_udp_default_hostname_and_ipv6():
    try:
        r = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        r.bind(("::1", 0))
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    r.settimeout(5)
    port = r.getsockname()[1]
    sink = SyslogSink(f"[::1]:{port}", pid=5)
    sink.send(["hello"])
    msg = r.recv(65536)
    host = socket.gethostname().split(".")[0]
    assert re.match(rb"^<182>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d " + re.escape(host.encode())
                     + rb" nfflowd\[5\]: hello$", msg), msg
    sink.close()
    r.close()


def test_close_flushes_and_counts_the_rest(tmp_path):
    path = tmp_path / "log"
    sink = SyslogSink(str(path), pid=1)
    sink.send(["a"], now=T_EXAMPLE)          # no socket yet: kept
    r = unix_receiver(path)
    sink.close()
    assert r.recv(65536).endswith(b": a")
    assert sink.sent == 1 and sink.dropped == 0
    r.close()
    sink2 = SyslogSink(str(tmp_path / "nobody"), pid=1)
    sink2.send(["b", "c"], now=T_EXAMPLE)
    t0 = time.monotonic()
    sink2.close()                            # never raises; the loss is counted
    assert sink2.dropped == 2
    # no syslog listened at any time: close does not wait out its 5 s for one
    assert time.monotonic() - t0 < 2.5


def test_close_waits_for_a_restarting_syslog(tmp_path):
    """A syslog daemon that was there and is restarting at our shutdown: close
    waits (up to its timeout) for the new socket and delivers the backlog."""
    import threading
    path = tmp_path / "log"
    r = unix_receiver(path)
    sink = SyslogSink(str(path), pid=1)
    sink.send(["a"], now=T_EXAMPLE)
    assert r.recv(65536).endswith(b": a")
    r.close()
    os.unlink(path)                          # syslogd went away
    sink.send(["b"], now=T_EXAMPLE)          # cannot go now: kept
    assert len(sink.backlog) == 1
    box = []
    t = threading.Timer(0.5, lambda: box.append(unix_receiver(path)))
    t.start()
    try:
        sink.close(timeout=10)
    finally:
        t.join()
    assert box and box[0].recv(65536).endswith(b": b")
    assert sink.sent == 2 and sink.dropped == 0
    box[0].close()


def test_send_csv_same_messages_as_send(tmp_path, utc):
    path = tmp_path / "log"
    r = unix_receiver(path)
    recs = flowtools.expand(example_flows(), EX_NOW_NS, EX_BOOT_MS, "172.16.1.1")
    a, b = SyslogSink(str(path), pid=4321), SyslogSink(str(path), pid=4321)
    a.send(flowtools.csv_lines(recs), now=T_EXAMPLE + 0.5)
    b.send_csv(recs, now=T_EXAMPLE + 0.5)
    got = [r.recv(65536) for _ in range(6)]
    assert got[:3] == got[3:] == [("<182>Jul 30 11:14:40 nfflowd[4321]: " + line).encode()
                                  for line in EXAMPLE_CSV]
    assert a.sent == b.sent == 3
    a.close()
    b.close()
    r.close()
