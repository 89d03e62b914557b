"""The syslog mirror: message format (sans-IO) and the sink over real sockets
(a unix datagram socket bound in a temp dir, UDP on 127.0.0.1)."""

import os
import re
import select
import socket
import time

import pytest

from nfflowd import flowtools
from nfflowd.io import syslog
from nfflowd.io.syslog import SyslogFormatter, SyslogSink, parse_address, pri, timestamp
from nfflowd.record import REPLY, FlowBatch

from test_flowtools import EX_BOOT_MS, EX_NOW_NS, EXAMPLE_CSV, example_flows, flow

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


def receive_all(r, sink) -> list:
    """What ``r`` receives until ``sink`` has sent everything, drained as the
    daemon's loop does (its queue may take fewer datagrams than were sent at
    once: max_dgram_qlen)."""
    r.setblocking(False)
    got = []
    for _ in range(100_000):            # bounded
        while True:
            try:
                got.append(r.recv(65536))
            except BlockingIOError:
                break
        if not sink.backlog:
            return got
        if sink.wants_write() and select.select([], [sink], [], 1)[1]:
            sink.on_writable()
    raise AssertionError("the sink did not drain")


LINE_RE = re.compile(rb"^<182>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d nfflowd\[(\d+)\]: (.*)$")


def test_unix_socket_end_to_end(tmp_path):
    path = tmp_path / "log"
    r = unix_receiver(path)
    sink = SyslogSink(str(path))
    recs = flowtools.expand(FlowBatch.from_flows(example_flows()), EX_NOW_NS, EX_BOOT_MS,
                            "172.16.1.1")
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
    """A receiver that does not read: sends find its queue full, nothing
    blocks or raises, and once it reads again the backlog drains as fast as
    it reads (the socket selected for writing, as the daemon's loop does):
    every line arrives, in order.  A full queue is not a send error."""
    path = tmp_path / "log"
    r = unix_receiver(path)
    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sink = SyslogSink(str(path), pid=1)
    n = 3000
    t0 = time.monotonic()
    sink.send([f"{i:06d}" + "x" * 200 for i in range(n)], now=T_EXAMPLE)
    assert time.monotonic() - t0 < 5
    assert 0 < len(sink.backlog) < n and sink.dropped == 0 and sink.send_errors == 0
    assert sink.wants_write() and sink.fileno() >= 0
    assert select.select([], [sink], [], 0)[1] == []        # full: not writable
    got = receive_all(r, sink)
    assert len(got) == n
    assert [int(g.split(b": ", 1)[1][:6]) for g in got] == list(range(n))
    assert sink.sent == n and not sink.backlog and not sink.wants_write()
    assert sink.send_errors == 0 and sink.dropped == 0
    sink.close()
    r.close()


def test_on_writable_sends_a_chunk_at_most(tmp_path, monkeypatch):
    """A drain call is bounded (the daemon's netlink socket waits meanwhile)."""
    monkeypatch.setattr(syslog, "DRAIN_CHUNK", 3)
    path = tmp_path / "log"
    sink = SyslogSink(str(path), pid=1)
    sink.send([str(i) for i in range(8)], now=T_EXAMPLE)   # nobody there: all wait
    r = unix_receiver(path)                  # its queue takes 10 (max_dgram_qlen) or more
    sink.flush()
    assert sink.sent == 3 and sink.wants_write()
    sink.on_writable()
    assert sink.sent == 6
    sink.on_writable()
    assert sink.sent == 8 and not sink.wants_write()
    assert [r.recv(65536).split(b": ", 1)[1] for _ in range(8)] == \
        [str(i).encode() for i in range(8)]
    sink.close()
    r.close()


def test_only_what_exceeds_the_backlog_is_dropped(tmp_path):
    """The bound is on lines waiting: what the socket takes at once is never
    dropped, even with no backlog at all; past the bound, the oldest waiting."""
    path = tmp_path / "log"
    r = unix_receiver(path)
    sink = SyslogSink(str(path), pid=1, backlog=0)
    sink.send(["a", "b", "c"], now=T_EXAMPLE)
    assert [r.recv(65536).split(b": ", 1)[1] for _ in range(3)] == [b"a", b"b", b"c"]
    assert sink.sent == 3 and sink.dropped == 0
    r.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)   # then it stops reading
    n = 500
    sink.send([f"{i:04d}" + "y" * 200 for i in range(n)], now=T_EXAMPLE)
    taken = sink.sent - 3
    assert 0 < taken < n and sink.dropped == n - taken and not sink.backlog
    sink2 = SyslogSink(str(path), pid=1, backlog=100)
    sink2.send([f"{i:04d}" + "y" * 200 for i in range(n)], now=T_EXAMPLE)
    assert sink2.sent == 0 and len(sink2.backlog) == 100 and sink2.dropped == n - 100
    assert sink2.backlog[0].endswith(b": 0400" + b"y" * 200)   # the newest kept
    sink.close(timeout=0)
    sink2.close(timeout=0)
    r.close()


class Events:
    """What the sink logs: (level, event, fields)."""

    def __init__(self):
        self.got = []

    def warning(self, event, **kw):
        self.got.append(("warning", event, kw))

    def info(self, event, **kw):
        self.got.append(("info", event, kw))

    def names(self):
        return [e for _, e, _ in self.got]


def test_unavailable_is_logged_once_per_episode(tmp_path, monkeypatch):
    path = tmp_path / "log"
    ev = Events()
    sink = SyslogSink(str(path), pid=1, log=ev)
    assert sink.open() is False              # the daemon's start: said at once
    assert ev.got == [("warning", "syslog_unavailable",
                       {"address": str(path), "error": "ENOENT", "backlog": 0,
                        "max_backlog": sink.max_backlog, "meaning": ev.got[0][2]["meaning"]})]
    for _ in range(5):                       # the episode goes on: not said again
        sink.send(["x"], now=T_EXAMPLE)
        sink.flush()
    assert ev.names() == ["syslog_unavailable"]
    assert sink.unavailable == 11 and len(sink.backlog) == 5
    assert sink.stats() == {"sent": 0, "dropped": 0, "send_errors": 0, "unavailable": 11,
                            "backlog": 5}
    r = unix_receiver(path)                  # syslog starts
    sink.flush()
    assert sink.sent == 5 and not sink.backlog
    # ... and is over once lines have gone with no failure for EPISODE_QUIET
    assert ev.names() == ["syslog_unavailable"]
    monkeypatch.setattr(syslog, "EPISODE_QUIET", 0.0)
    sink.flush()
    assert ev.names() == ["syslog_unavailable", "syslog_available"]
    assert ev.got[1][2]["dropped_meanwhile"] == 0
    # syslogd goes away again: a new episode, said once
    r.close()
    os.unlink(path)
    for _ in range(3):
        sink.send(["y"], now=T_EXAMPLE)
    assert ev.names() == ["syslog_unavailable", "syslog_available", "syslog_unavailable"]
    assert sink.send_errors == 1 and len(sink.backlog) == 3
    sink.close()
    assert sink.dropped == 3


def test_backlog_full_is_logged_once_per_episode(tmp_path):
    path = tmp_path / "log"
    ev = Events()
    sink = SyslogSink(str(path), pid=1, backlog=5, log=ev)
    sink.send([f"l{i}" for i in range(8)], now=T_EXAMPLE)
    sink.send([f"m{i}" for i in range(8)], now=T_EXAMPLE)
    assert ev.names() == ["syslog_unavailable", "syslog_backlog_full"]
    assert sink.dropped == 11
    r = unix_receiver(path)
    sink.flush()
    assert ev.names()[-1] == "syslog_backlog_drained"
    assert ev.got[-1][2]["dropped_meanwhile"] == 11
    got = [r.recv(65536).split(b": ", 1)[1] for _ in range(5)]
    assert got == [f"m{i}".encode() for i in range(3, 8)]
    sink.send([f"n{i}" for i in range(8)], now=T_EXAMPLE)    # all taken: nothing to say
    assert ev.names()[-1] == "syslog_backlog_drained" and sink.dropped == 11
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
    recs = flowtools.expand(FlowBatch.from_flows(example_flows()), EX_NOW_NS, EX_BOOT_MS,
                            "172.16.1.1")
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


def test_meter_print_keeps_stdout_to_the_csv(tmp_path):
    """``nfflowd meter -r FILE --print`` with no syslog listening: the CSV on
    stdout only; the warning, once, and the loss on stderr."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    conf = tmp_path / "nfflowd.yaml"
    conf.write_text(f"export:\n  collectors: []\nsyslog: {{address: {tmp_path}/nobody}}\n")
    p = subprocess.run([sys.executable, "-m", "nfflowd.cli", "-c", str(conf), "meter", "-r",
                        str(root / "tests" / "data" / "pcaps" / "dns.pcap"), "--print"],
                       capture_output=True, text=True, timeout=60, cwd=root)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines and all(len(line.split(",")) == 18 for line in lines), p.stdout
    assert p.stderr.count("event=syslog_unavailable") == 1, p.stderr
    assert f"syslog_dropped={len(lines)}" in p.stderr, p.stderr


# The exact bytes of the mirror's messages, pinned: a table of flows (the
# flow-tools triplet of a translated connection, a connection without NAT,
# ICMP, IPv6 with and without prefix translation, counters past 32 bits) and
# the datagrams they give, local (/dev/log) form.  Header of every line:
# export time T_EXAMPLE + 0.5 in UTC, pid 4321, EXADDR 172.16.1.1.
P = "<182>Jul 30 11:14:40 nfflowd[4321]: "
H = P + "1248952480,737235000,279737,172.16.1.1,"
S, E = EX_BOOT_MS + 136315, EX_BOOT_MS + 279737     # FIRST 136315, LAST 279737
PINNED = [
    ("ipv4_tcp_snat",
     [flow("10.0.195.106", "74.125.6.225", 62380, 80, post_src="192.76.7.154",
           post_sport=1025, packets=720, octets=38052, start_ms=S, end_ms=E, tcp_flags=0x1b,
           in_if=2, out_if=3),
      flow("74.125.6.225", "192.76.7.154", 80, 1025, post_dst="10.0.195.106",
           post_dport=62380, packets=1432, octets=2027040, start_ms=S, end_ms=E,
           direction=REPLY, tcp_flags=0x13, in_if=3, out_if=2)],
     [H + "720,38052,136315,279737,10.0.195.106,74.125.6.225,0.0.0.0,2,3,62380,80,6,0,27",
      H + "720,38052,136315,279737,192.76.7.154,74.125.6.225,0.0.0.0,2,3,1025,80,6,0,27",
      H + "1432,2027040,136315,279737,74.125.6.225,192.76.7.154,0.0.0.0,3,2,80,1025,6,0,19"]),
    ("ipv4_udp_no_nat",
     [flow("10.0.0.5", "10.0.1.5", 5353, 53, proto=17, packets=1, octets=61, start_ms=S,
           end_ms=S, tos=0x10),
      flow("10.0.1.5", "10.0.0.5", 53, 5353, proto=17, packets=1, octets=120, start_ms=S,
           end_ms=S + 2, direction=REPLY)],
     [H + "1,61,136315,136315,10.0.0.5,10.0.1.5,0.0.0.0,0,0,5353,53,17,16,0",
      H + "1,120,136315,136317,10.0.1.5,10.0.0.5,0.0.0.0,0,0,53,5353,17,0,0"]),
    ("icmp_echo_snat",
     [flow("10.0.0.5", "198.51.100.7", 0, 8 * 256, post_src="203.0.113.9", proto=1,
           packets=4, octets=336, start_ms=S, end_ms=E),
      flow("198.51.100.7", "203.0.113.9", 0, 0, post_dst="10.0.0.5", proto=1, packets=4,
           octets=336, start_ms=S, end_ms=E, direction=REPLY)],
     [H + "4,336,136315,279737,10.0.0.5,198.51.100.7,0.0.0.0,0,0,0,2048,1,0,0",
      H + "4,336,136315,279737,203.0.113.9,198.51.100.7,0.0.0.0,0,0,0,2048,1,0,0",
      H + "4,336,136315,279737,198.51.100.7,203.0.113.9,0.0.0.0,0,0,0,0,1,0,0"]),
    ("ipv6_no_nat_and_npt",
     [flow("2001:db8::1", "2001:db8:1::2", 40000, 22, packets=10, octets=1500, start_ms=S,
           end_ms=E),
      flow("fd00::5", "2001:db8:1::2", 40001, 22, post_src="2001:db8:ff::5", proto=58,
           packets=2, octets=208, start_ms=S, end_ms=E, tos=0xb8, in_if=65535, out_if=65536)],
     [H + "10,1500,136315,279737,2001:db8::1,2001:db8:1::2,::,0,0,40000,22,6,0,0",
      H + "2,208,136315,279737,fd00::5,2001:db8:1::2,::,65535,0,40001,22,58,184,0",
      H + "2,208,136315,279737,2001:db8:ff::5,2001:db8:1::2,::,65535,0,40001,22,58,184,0"]),
    ("counters_past_32_bits_and_times_before_boot",
     [flow("192.0.2.1", "192.0.2.2", 65535, 65535, proto=17, packets=2**32, octets=2**40 + 5,
           start_ms=EX_BOOT_MS - 5, end_ms=EX_BOOT_MS + 1)],
     [H + "4294967295,4294967295,0,1,192.0.2.1,192.0.2.2,0.0.0.0,0,0,65535,65535,17,0,0"]),
]


def pinned_batches():
    """Every PINNED case's flows, one batch each, all in one, and all eight
    times over (enough lines to go by sendmmsg), as the flow-tools view made
    both ways (Flow lists and columns)."""
    everything = [f for _, flows, _ in PINNED for f in flows]
    lines = [m for c in PINNED for m in c[2]]
    for name, flows, expected in PINNED + [("all", everything, lines),
                                           ("all_x8", everything * 8, lines * 8)]:
        for how in ("flows", "columns"):
            batch = FlowBatch.from_flows(flows)
            if how == "columns":
                batch = batch.as_columns()
            yield (f"{name}/{how}",
                   flowtools.expand(batch, EX_NOW_NS, EX_BOOT_MS, "172.16.1.1"),
                   [m.encode() for m in expected])


@pytest.mark.parametrize("name,batch,expected", list(pinned_batches()),
                         ids=[c[0] for c in pinned_batches()])
def test_exact_bytes_of_the_mirror(tmp_path, utc, name, batch, expected):
    path = tmp_path / "log"
    r = unix_receiver(path)
    sink = SyslogSink(str(path), pid=4321)
    sink.send_csv(batch, now=T_EXAMPLE + 0.5)
    assert receive_all(r, sink) == expected
    assert sink.sent == len(expected) and not sink.backlog
    assert [(P + line).encode() for line in flowtools.csv_lines(batch)] == expected
    sink.close()
    r.close()


@pytest.mark.parametrize("name,flows,expected", PINNED, ids=[c[0] for c in PINNED])
def test_exact_bytes_over_udp(utc, name, flows, expected):
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", 0))
    r.settimeout(5)
    sink = SyslogSink(f"127.0.0.1:{r.getsockname()[1]}", pid=4321, hostname="gw1")
    sink.send_csv(flowtools.expand(FlowBatch.from_flows(flows), EX_NOW_NS, EX_BOOT_MS,
                                   "172.16.1.1"), now=T_EXAMPLE + 0.5)
    assert [r.recv(65536) for _ in expected] == [
        m.replace(" nfflowd[", " gw1 nfflowd[", 1).encode() for m in expected]
    sink.close()
    r.close()


@pytest.mark.parametrize("over", ["unix", "udp"])
def test_a_line_too_long_to_send_is_dropped_and_the_rest_goes(tmp_path, over):
    """A datagram the socket can never take (EMSGSIZE) is dropped and
    counted, once; the lines before and after it go, in order."""
    if over == "unix":
        r = unix_receiver(tmp_path / "log")
        sink = SyslogSink(str(tmp_path / "log"), pid=1)
        big = 400_000               # past the socket's send buffer
    else:
        r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        r.bind(("127.0.0.1", 0))
        sink = SyslogSink(f"127.0.0.1:{r.getsockname()[1]}", pid=1, hostname="h")
        big = 70_000                # past a UDP datagram
    for n in (4, 200):          # a few lines (a send each) and many (sendmmsg)
        lines = [str(i) for i in range(n)]
        sink.send(lines[:n // 2] + ["x" * big] + lines[n // 2:-1] + ["x" * big] + lines[-1:],
                  now=T_EXAMPLE)
        assert [g.split(b": ", 1)[1] for g in receive_all(r, sink)] == [
            x.encode() for x in lines]
    assert sink.sent == 204 and sink.dropped == 4 and sink.send_errors == 4
    assert sink.last_error == "EMSGSIZE" and not sink.backlog
    sink.close()
    r.close()
