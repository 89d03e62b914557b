"""IPFIX over TCP (``TcpCollector``) against real TCP servers on 127.0.0.1:
whole messages in order, (re)connection with backoff and the templates first
on every connection, the bounded buffer, a reader that does not read, close,
and the stream read back by libfixbuf's ipfixDump.

Single-threaded: the test is the collector too (the kernel holds what the
server has not accepted or read yet).  Time is a fake clock where backoff
matters, so nothing sleeps for it; every loop has a deadline."""

import select
import shutil
import socket
import struct
import subprocess
import time

import pytest

from nfflowd.io.export import CONNECTED, CONNECTING, DISCONNECTED, ExportError, TcpCollector
from nfflowd.ipfix import IpfixEncoder
from nfflowd.record import FlowBatch

from test_netflow9 import T0, many_flows, sample_flows, sample_nat_events

HDR = struct.Struct("!HHIII")      # IPFIX: version, length, export time, sequence, domain


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


_PATTERN = bytes(range(256)) * 260


def msg(i, size=100):
    """A message framed like IPFIX (version 10, length) carrying ``i``."""
    assert HDR.size <= size <= 65535
    body = _PATTERN[i % 256:i % 256 + size - HDR.size]
    return HDR.pack(10, size, 0, i, 0) + body


PREAMBLE = HDR.pack(10, 20, 0, 0xFFFFFFFF, 0) + b"TPL!"     # stands for the templates


def split(stream):
    """The messages of a stream, by their length field; the stream must end
    exactly at a message boundary (nothing cut)."""
    out, off = [], 0
    while off < len(stream):
        assert len(stream) - off >= HDR.size, f"cut header at {off}"
        version, n = struct.unpack_from("!HH", stream, off)
        assert version == 10 and n >= HDR.size, f"garbage at {off}"
        assert off + n <= len(stream), f"cut message at {off}: {n} > {len(stream) - off}"
        out.append(bytes(stream[off:off + n]))
        off += n
    return out


def listener(listen=True, rcvbuf=None):
    """A TCP server socket on 127.0.0.1 (bound; listening unless told not
    to: a bound socket that does not listen refuses connections but keeps
    the port for a later listen())."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    s.bind(("127.0.0.1", 0))
    if listen:
        s.listen(8)
    s.settimeout(5)
    return s


def accept(srv):
    conn, _ = srv.accept()
    conn.setblocking(False)
    return conn


def run(c, conn, until, timeout=5.0):
    """The daemon's loop, with the server's reads: select the collector for
    writing while it wants to, read what the server got.  Returns the bytes
    read once ``until(data)`` holds."""
    data = bytearray()
    deadline = time.monotonic() + timeout
    while not until(data):
        assert time.monotonic() < deadline, (len(data), c.stats())
        w = [c] if c.wants_write() else []
        r, w, _ = select.select([conn], w, [], 0.05)
        if w:
            c.on_writable()
        if r:
            chunk = conn.recv(65536)
            assert chunk, "the collector closed the connection"
            data += chunk
        c.tick()
    return bytes(data)


def total(messages):
    return sum(len(m) for m in messages)


def wait_connected(c, clock=None, timeout=5.0):
    deadline = time.monotonic() + timeout
    while c.state != CONNECTED:
        assert time.monotonic() < deadline, c.stats()
        if c.state == CONNECTING:
            select.select([], [c], [], 0.05)
        c.tick()


def test_messages_arrive_whole_and_in_order_preamble_first():
    srv = listener()
    heads = []

    def on_connect(head):
        heads.append(head)
        return PREAMBLE

    c = TcpCollector("127.0.0.1", srv.getsockname()[1], on_connect=on_connect)
    ms = [msg(i, 16 + (i * 37) % 3000) for i in range(300)]
    for i, m in enumerate(ms):
        assert c.send(m, records=i % 7) is True
    conn = accept(srv)
    data = run(c, conn, lambda d: len(d) >= len(PREAMBLE) + total(ms))
    assert split(data) == [PREAMBLE] + ms
    assert heads == [ms[0]]             # on_connect saw the message it goes before
    assert not c.wants_write() and c.queued_bytes == 0 and c.queued_messages == 0
    s = c.stats()
    assert (s["messages_sent"], s["records_sent"], s["bytes_sent"]) == \
        (300, sum(i % 7 for i in range(300)), len(data))
    assert (s["connects"], s["disconnects"], s["send_errors"], s["messages_dropped"]) == \
        (1, 0, 0, 0)
    assert c.preamble_sent == 1
    c.close()
    assert c.state == "closed" and conn.recv(10) == b""     # closed cleanly (EOF)
    assert c.send(msg(1)) is False and c.messages_dropped == 1
    conn.close()
    srv.close()


def test_not_listening_backoff_then_templates_first():
    srv = listener(listen=False)        # the port refuses connections for now
    port = srv.getsockname()[1]
    clock = Clock()
    enc = IpfixEncoder(domain_id=7, template_refresh_packets=0, template_refresh_seconds=0)
    c = TcpCollector("127.0.0.1", port, backoff_initial=1, backoff_max=4, clock=clock,
                     on_connect=lambda head: enc.templates_message(T0, before=head))
    batch1 = enc.encode(FlowBatch.from_flows(sample_flows()), [], T0)     # with templates (first encode)
    for m, n in zip(batch1, enc.last_counts):
        assert c.send(m, n) is True                 # queued; the connect is refused
    attempts = [c.send_errors]
    assert c.send_errors == 1 and c.last_error == "ECONNREFUSED"
    assert c.state == DISCONNECTED and c.connects == 0 and c.next_wakeup() == 1001.0
    # Backoff: 1, 2, 4, 4 s; no attempt in between.
    for t, due in [(1000.5, 1001.0), (1001.0, 1003.0), (1002.9, 1003.0), (1003.0, 1007.0),
                   (1007.0, 1011.0)]:
        clock.t = t
        c.tick()
        attempts.append(c.send_errors)
        assert c.next_wakeup() == due
    assert attempts == [1, 1, 2, 2, 3, 4]
    batch2 = enc.encode(FlowBatch.from_flows(sample_flows()), sample_nat_events(), T0)   # no templates in it
    for m, n in zip(batch2, enc.last_counts):
        c.send(m, n)
    assert c.send_errors == 4                       # not due: no attempt
    assert c.queued_messages == len(batch1) + len(batch2)
    srv.listen(1)
    clock.t = 1011.0
    c.tick()
    wait_connected(c)
    assert c.connects == 1 and c.next_wakeup() is None
    conn = accept(srv)
    expect = total(batch1) + total(batch2)
    data = run(c, conn, lambda d: len(d) >= expect + 16 + 4 + 1)
    got = split(data)
    assert got[1:] == batch1 + batch2
    tpl = got[0]
    assert struct.unpack_from("!H", tpl, 16)[0] == 2 and len(tpl) == 16 + 4 + sum(
        len(t.record) for t in enc.templates)       # a templates-only message
    assert HDR.unpack_from(tpl)[3] == HDR.unpack_from(batch1[0])[3] == 0
    assert c.messages_sent == len(batch1) + len(batch2) and c.messages_dropped == 0
    c.close()
    conn.close()
    srv.close()


def test_collector_closes_connection_reconnect_sends_templates_again():
    srv = listener()
    clock = Clock()
    n_connect = []

    def on_connect(head):
        n_connect.append(head)
        return [PREAMBLE, msg(0xABCD, 24)]          # several preamble messages, in order

    c = TcpCollector("127.0.0.1", srv.getsockname()[1], backoff_initial=0.5, clock=clock,
                     on_connect=on_connect)
    first = [msg(i, 200) for i in range(10)]
    for m in first:
        c.send(m, 2)
    wait_connected(c)
    conn = accept(srv)
    data = run(c, conn, lambda d: len(d) >= 44 + total(first))
    assert split(data) == [PREAMBLE, msg(0xABCD, 24)] + first
    conn.close()                                    # the collector goes away
    # Noticed by tick (EOF), before anything is written into the dead connection.
    deadline = time.monotonic() + 5
    while c.state == CONNECTED:
        assert time.monotonic() < deadline
        time.sleep(0.01)
        c.tick()
    assert c.disconnects == 1 and c.last_error.startswith("EOF")
    assert c.next_wakeup() == clock.t + 0.5
    second = [msg(100 + i, 300) for i in range(5)]
    for m in second:
        c.send(m, 1)                                # queued while disconnected
    assert c.connects == 1 and c.queued_messages == 5
    clock.t += 0.5
    c.tick()
    wait_connected(c)
    conn = accept(srv)
    data = run(c, conn, lambda d: len(d) >= 44 + total(second))
    assert split(data) == [PREAMBLE, msg(0xABCD, 24)] + second     # templates first again
    assert n_connect == [first[0], second[0]]
    assert (c.connects, c.disconnects, c.messages_sent, c.records_sent, c.messages_dropped) \
        == (2, 1, 15, 25, 0)
    c.close()
    conn.close()
    srv.close()


def test_reset_connection_mid_message_resends_it_whole_after_templates():
    srv = listener(rcvbuf=4096)
    clock = Clock()
    c = TcpCollector("127.0.0.1", srv.getsockname()[1], clock=clock,
                     on_connect=lambda head: PREAMBLE)
    c.send(msg(0, 100))
    wait_connected(c)
    conn = accept(srv)
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    big = [msg(i, 60000) for i in range(1, 4)]
    for m in big:
        c.send(m, 1)
    assert c._offset > 0                # the first big one is half written
    head = c._queue[0][0]
    # The collector dies with unread data: RST.
    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    conn.close()
    deadline = time.monotonic() + 5
    while c.state == CONNECTED:
        assert time.monotonic() < deadline
        time.sleep(0.01)
        c.tick()
    assert c.disconnects == 1 and c.last_error in ("ECONNRESET", "EPIPE")
    assert c._offset == 0 and c._queue[0][0] is head
    clock.t += 10
    c.tick()
    wait_connected(c)
    conn = accept(srv)
    rest = big[big.index(head):]
    data = run(c, conn, lambda d: len(d) >= len(PREAMBLE) + total(rest))
    assert split(data) == [PREAMBLE] + rest        # whole, from its first byte
    c.close()
    conn.close()
    srv.close()


def test_buffer_bound_drops_oldest_whole_messages():
    srv = listener(listen=False)
    clock = Clock()
    c = TcpCollector("127.0.0.1", srv.getsockname()[1], buffer_limit=1000, clock=clock,
                     on_connect=lambda head: PREAMBLE)
    results = [c.send(msg(i, 330), 10 + i) for i in range(10)]
    assert results == [True] * 10
    assert c.queued_messages == 3 and c.queued_bytes == 990
    assert (c.messages_dropped, c.records_dropped) == (7, sum(10 + i for i in range(7)))
    assert c.send(msg(99, 1001), 5) is False        # alone larger than the buffer
    assert (c.messages_dropped, c.records_dropped, c.queued_bytes) == (8, 91 + 5, 990)
    srv.listen(1)
    clock.t += 100
    c.tick()
    wait_connected(c)
    conn = accept(srv)
    # The preamble (20 bytes) pushed the queue over 1000: the oldest went.
    assert (c.messages_dropped, c.records_dropped) == (9, 96 + 17)
    data = run(c, conn, lambda d: len(d) >= len(PREAMBLE) + 660)
    assert split(data) == [PREAMBLE, msg(8, 330), msg(9, 330)]
    assert c.messages_sent == 2 and c.records_sent == 18 + 19
    c.close()
    conn.close()
    srv.close()


def test_slow_reader_never_blocks_send_and_nothing_is_cut():
    srv = listener(rcvbuf=4096)
    c = TcpCollector("127.0.0.1", srv.getsockname()[1], buffer_limit=100_000,
                     on_connect=lambda head: PREAMBLE)
    c.send(msg(0, 100), 1)
    wait_connected(c)
    conn = accept(srv)                  # and does not read
    c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sent = [msg(0, 100)]
    slowest = in_send = 0.0
    partial = 0
    for i in range(1, 3000):
        m = msg(i, 20 + (i * 7919) % 30000)    # up to 30 kB: the socket cuts them
        sent.append(m)
        t = time.monotonic()
        assert c.send(m, 1) is True
        t = time.monotonic() - t
        in_send += t
        slowest = max(slowest, t)
        partial += c._offset > 0
        assert c.queued_bytes <= 100_000
    assert in_send < 5 and slowest < 0.5      # (typically 20 ms and 1 ms in all)
    assert c.wants_write() and c.messages_dropped > 2000
    assert partial > 0                  # the stream was cut by the socket, not by us
    data = run(c, conn, lambda d: not c.wants_write() and len(d) == c.bytes_sent)
    got = split(data)
    assert got[0] == PREAMBLE
    idx = [HDR.unpack_from(m)[3] for m in got[1:]]
    assert idx == sorted(set(idx))      # in order, no duplicates
    assert all(m == sent[i] for m, i in zip(got[1:], idx))   # each one whole and intact
    assert len(idx) == c.messages_sent == c.records_sent == 3000 - c.messages_dropped
    assert idx[-1] == 2999              # the newest are kept
    c.close()
    conn.close()
    srv.close()


def test_connect_timeout_counts_and_backs_off():
    srv = listener(listen=False)
    srv.listen(0)                       # accept queue of one, never accepted
    port = srv.getsockname()[1]
    fillers = []
    for _ in range(4):                  # fill it: later SYNs are dropped
        f = socket.socket()
        f.setblocking(False)
        f.connect_ex(("127.0.0.1", port))
        fillers.append(f)
    time.sleep(0.1)
    clock = Clock()
    c = TcpCollector("127.0.0.1", port, connect_timeout=3, backoff_initial=2, clock=clock)
    c.send(msg(1), 1)
    if c.state != CONNECTING:
        pytest.skip(f"the kernel did not leave the connect pending ({c.state})")
    assert c.wants_write() and c.fileno() >= 0 and c.next_wakeup() == 1003.0
    clock.t = 1002.9
    c.tick()
    assert c.state == CONNECTING and c.send_errors == 0
    clock.t = 1003.0
    c.tick()
    assert c.state == DISCONNECTED and c.last_error == "ETIMEDOUT" and c.send_errors == 1
    assert c.next_wakeup() == 1005.0 and not c.wants_write() and c.fileno() == -1
    c.close(0)
    assert c.messages_dropped == 1 and c.records_dropped == 1
    for f in fillers:
        f.close()
    srv.close()


def test_close_flushes_within_timeout_and_counts_the_rest():
    srv = listener()
    c = TcpCollector("127.0.0.1", srv.getsockname()[1], clock=Clock())
    ms = [msg(i, 500) for i in range(50)]
    for m in ms:
        c.send(m, 2)
    c.close(timeout=5)                  # everything fits in the kernel's buffers
    assert (c.messages_sent, c.messages_dropped, c.disconnects) == (50, 0, 1)
    conn = accept(srv)
    conn.setblocking(True)
    conn.settimeout(5)
    data = b""
    while chunk := conn.recv(65536):
        data += chunk
    assert split(data) == ms
    conn.close()
    # Nobody listening: close() tries once more at once (backoff or not), then
    # counts what is left as dropped, quickly.
    probe = listener(listen=False)
    clock = Clock()
    c = TcpCollector("127.0.0.1", probe.getsockname()[1], clock=clock)
    for m in ms[:5]:
        c.send(m, 3)
    assert c.send_errors == 1
    t0 = time.monotonic()
    c.close(timeout=1)
    assert time.monotonic() - t0 < 1
    assert c.send_errors == 2 and (c.messages_dropped, c.records_dropped) == (5, 15)
    assert c.fileno() == -1 and not c.wants_write()
    probe.close()
    srv.close()


def test_on_connect_failure_never_sends_data_without_templates():
    srv = listener()
    clock = Clock()
    calls = []

    def broken(head):
        calls.append(head)
        raise RuntimeError("no templates today")

    c = TcpCollector("127.0.0.1", srv.getsockname()[1], clock=clock, on_connect=broken)
    assert c.send(msg(1), 1) is True            # never raises
    wait_connected_or_failed = time.monotonic() + 5
    while not calls:
        assert time.monotonic() < wait_connected_or_failed
        select.select([], [c] if c.wants_write() else [], [], 0.05)
        c.tick()
    assert c.state == DISCONNECTED and c.last_error.startswith("on_connect: RuntimeError")
    assert c.queued_messages == 1 and c.messages_sent == 0 and c.bytes_sent == 0
    conn = accept(srv)
    conn.settimeout(5)
    assert conn.recv(100) == b""                # nothing was written
    c.close(0)
    conn.close()
    srv.close()


def test_unresolvable_host_and_bad_arguments():
    with pytest.raises(ExportError):
        TcpCollector("no-such-host.invalid", 4739)
    with pytest.raises(ValueError):
        TcpCollector("127.0.0.1", 4739, buffer_limit=0)
    with pytest.raises(ValueError):
        TcpCollector("127.0.0.1", 4739, backoff_initial=5, backoff_max=1)


def test_export_source_binding():
    srv = listener()
    port = srv.getsockname()[1]
    for source, bound, problem in [("127.0.0.1", True, None),
                                   ("192.0.2.1", False, "not an address of this host"),
                                   ("::1", False, "IPv6")]:
        c = TcpCollector("127.0.0.1", port, source=source)
        c.send(msg(1))
        wait_connected(c)               # connected either way
        assert c.bound is bound
        assert (c.bind_problem is None) if problem is None else (problem in c.bind_problem)
        conn, peer = srv.accept()
        assert peer[0] == "127.0.0.1"
        c.close()
        conn.close()
    srv.close()


def test_templates_message():
    enc = IpfixEncoder(domain_id=3)
    ms = enc.encode(FlowBatch.from_flows(sample_flows()), [], T0)
    counts = list(enc.last_counts)
    t = enc.templates_message(T0 + 5000)
    assert HDR.unpack_from(t) == (10, len(t), T0 // 1000 + 5, enc.sequence, 3)
    assert struct.unpack_from("!H", t, 16)[0] == 2 and enc.last_counts == counts
    t2 = enc.templates_message(T0, before=ms[0])
    assert HDR.unpack_from(t2)[3] == 0 and t2[12:] == t[12:]
    assert not enc.templates_due(T0)        # just sent: no refresh due


@pytest.mark.skipif(shutil.which("ipfixDump") is None, reason="needs ipfixDump (libfixbuf)")
def test_ipfixdump_reads_each_connections_stream(tmp_path):
    """libfixbuf 2.4's ipfixDump cannot listen on TCP (nor can nfcapd 1.7.1):
    what each connection carried is written to a file and read back, the way
    a collector reads a TCP stream - templates must come first in each, and
    the sequence numbers must not step back."""
    srv = listener()
    clock = Clock()
    enc = IpfixEncoder(domain_id=11, max_size=600, template_refresh_packets=0,
                       template_refresh_seconds=0)
    c = TcpCollector("127.0.0.1", srv.getsockname()[1], clock=clock,
                     on_connect=lambda head: enc.templates_message(T0, before=head))

    def export(flows, nats):
        ms = enc.encode(FlowBatch.from_flows(flows), nats, T0)
        for m, n in zip(ms, enc.last_counts):
            assert c.send(m, n)
        return ms, sum(enc.last_counts)

    ms1, n1 = export(sample_flows(), sample_nat_events())
    wait_connected(c)
    conn = accept(srv)
    ms2, n2 = export(many_flows(20), [])
    stream1 = run(c, conn, lambda d: len(d) >= c.bytes_sent and not c.wants_write())
    conn.close()
    deadline = time.monotonic() + 5
    while c.state == CONNECTED:
        assert time.monotonic() < deadline
        time.sleep(0.01)
        c.tick()
    ms3, n3 = export(many_flows(25), sample_nat_events())     # queued while down
    before = c.bytes_sent
    clock.t += 1
    c.tick()
    wait_connected(c)
    conn = accept(srv)
    stream2 = run(c, conn, lambda d: len(d) >= c.bytes_sent - before and not c.wants_write())
    assert c.messages_sent == len(ms1 + ms2 + ms3) and c.messages_dropped == 0
    for name, stream, ms, n in (("one", stream1, ms1 + ms2, n1 + n2),
                                ("two", stream2, ms3, n3)):
        got = split(stream)
        assert got[len(got) - len(ms):] == ms
        f = tmp_path / f"conn-{name}.ipfix"
        f.write_bytes(stream)
        res = subprocess.run(["ipfixDump", "--in", str(f)], capture_output=True, text=True,
                             timeout=60)
        assert res.returncode == 0, res.stderr
        assert res.stderr.strip() == "", res.stderr       # no "out of sequence", no warning
        assert f"{len(got)} Messages, {n} Data Records" in res.stdout
        assert "natEvent" in res.stdout and "postNATSourceIPv4Address" in res.stdout
    c.close()
    conn.close()
    srv.close()
