"""The UDP export sink, over loopback only."""

import socket
import struct
import time

import pytest

from nfflowd import flowtools
from nfflowd.record import FlowBatch
from nfflowd.io.export import UdpCollector
from nfflowd.netflow5 import V5Encoder, record_count
from nfflowd.netflow9 import NetflowV9Encoder

from test_flowtools import EX_BOOT_MS, EX_NOW_NS, example_flows
from test_netflow9 import T0, many_flows


def receiver(family=socket.AF_INET, addr="127.0.0.1"):
    r = socket.socket(family, socket.SOCK_DGRAM)
    r.bind((addr, 0))
    r.settimeout(5)
    return r


def test_send_v5_and_receive():
    netflow = pytest.importorskip("netflow")
    r = receiver()
    port = r.getsockname()[1]
    c = UdpCollector("127.0.0.1", port)
    recs = flowtools.expand(FlowBatch.from_flows(example_flows()), EX_NOW_NS, EX_BOOT_MS, "172.16.1.1")
    (d,) = V5Encoder().encode(recs)
    assert c.send(d, record_count(d)) is True
    data = r.recv(65536)
    assert data == d
    p = netflow.parse_packet(data)
    assert p.header.count == 3
    assert (c.datagrams_sent, c.records_sent, c.bytes_sent, c.send_errors) == (1, 3, len(d), 0)
    c.close()
    r.close()


def test_unreachable_collector_never_raises_and_counts():
    probe = receiver()
    port = probe.getsockname()[1]
    probe.close()                           # nobody listens on this port now
    c = UdpCollector("127.0.0.1", port)
    t0 = time.monotonic()
    results = [c.send(b"x" * 100, 1) for _ in range(50)]
    for _ in range(20):                     # the ICMP error may take a moment
        if c.send_errors:
            break
        time.sleep(0.01)
        results.append(c.send(b"x" * 100, 1))
    assert time.monotonic() - t0 < 5
    # the refusals are counted as errors; each datagram was still handed to
    # the kernel (the refusal is for an earlier one), so none is dropped
    assert c.send_errors >= 1
    assert c.last_error == "ECONNREFUSED"
    assert all(results) and c.datagrams_sent == len(results)
    assert (c.records_sent, c.datagrams_dropped, c.records_dropped) == (len(results), 0, 0)
    # The collector comes back on the same port: the very next send reaches it.
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", port))
    r.settimeout(5)
    assert c.send(b"back", 1)
    assert r.recv(100) == b"back"
    c.close()
    r.close()


def _v9_batch(enc, i):
    """One small batch through a v9 encoder: (datagrams, records each)."""
    out = enc.encode(FlowBatch.from_flows(many_flows(3, start=T0 + 1000 * i)), [], T0 + 1000 * i, T0 - 60_000)
    return list(zip(out, enc.last_counts))


def test_collector_back_gets_the_next_datagram_with_no_sequence_gap():
    """#15 item 5: a v9 collector goes away (its port closed: the kernel
    answers port unreachable) and comes back on the same port.  The first
    datagram after it is back arrives (the refusal pending for an earlier one
    is not its loss), the sequence numbers it gets have no gap, and every
    record the encoder made is counted sent or dropped, exactly."""
    r = receiver()
    port = r.getsockname()[1]
    enc = NetflowV9Encoder(source_id=7)
    c = UdpCollector("127.0.0.1", port)
    seqs = []
    for i in range(3):                      # up
        for d, n in _v9_batch(enc, i):
            assert c.send(d, n)
            seqs.append(struct.unpack_from("!I", r.recv(65535), 12)[0])
    assert seqs == [0, 1, 2]
    r.close()                               # down
    for i in range(3, 8):
        for d, n in _v9_batch(enc, i):
            c.send(d, n)
        time.sleep(0.02)                    # its port unreachable comes back
    down_errors = c.send_errors
    assert down_errors >= 1 and c.last_error == "ECONNREFUSED"
    time.sleep(0.05)
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # back
    r.bind(("127.0.0.1", port))
    r.settimeout(0.5)
    try:
        back = enc.sequence                 # the first datagram's sequence
        sent = [c.send(d, n) for i in range(8, 12) for d, n in _v9_batch(enc, i)]
        got = []
        for _ in range(len(sent)):
            try:
                got.append(struct.unpack_from("!I", r.recv(65535), 12)[0])
            except socket.timeout:
                break
    finally:
        r.close()
        c.close()
    assert got == list(range(back, back + 4))
    assert sent == [True] * 4
    assert c.send_errors == down_errors + 1     # the refusal left pending at its return
    # exact accounting: the encoder made 12 batches of 3 records
    assert enc.records_sent == 36
    assert c.records_sent + c.records_dropped == enc.records_sent
    assert c.datagrams_sent + c.datagrams_dropped == enc.datagrams_sent == 12
    # nothing was refused by this host's kernel: every datagram left
    assert (c.records_dropped, c.datagrams_dropped) == (0, 0)


def test_bind_to_local_source():
    r = receiver()
    c = UdpCollector("127.0.0.1", r.getsockname()[1], source="127.0.0.2")
    assert c.bound and c.bind_problem is None
    c.send(b"hi")
    data, peer = r.recvfrom(100)
    assert data == b"hi" and peer[0] == "127.0.0.2"
    c.close()
    r.close()


def test_non_local_source_is_not_bound():
    r = receiver()
    # 192.0.2.1 (TEST-NET-1) is not an address of this host: EADDRNOTAVAIL.
    c = UdpCollector("127.0.0.1", r.getsockname()[1], source="192.0.2.1")
    assert not c.bound
    assert "not an address of this host" in c.bind_problem
    assert c.send(b"still sent")
    data, peer = r.recvfrom(100)
    assert data == b"still sent" and peer[0] == "127.0.0.1"
    c.close()
    r.close()


def test_source_of_other_family_is_not_bound():
    r = receiver()
    c = UdpCollector("127.0.0.1", r.getsockname()[1], source="::1")
    assert not c.bound and "IPv6" in c.bind_problem
    assert c.send(b"v4")
    assert r.recv(100) == b"v4"
    c.close()
    r.close()


def test_ipv6_collector():
    try:
        r = receiver(socket.AF_INET6, "::1")
    except OSError as e:
        pytest.skip(f"no IPv6 loopback: {e}")
    c = UdpCollector("::1", r.getsockname()[1], source="::1")
    assert c.bound
    assert c.send(b"six")
    assert r.recv(100) == b"six"
    c.close()
    r.close()


def test_oversized_datagram_counted():
    r = receiver()
    c = UdpCollector("127.0.0.1", r.getsockname()[1])
    assert c.send(b"x" * 70000) is False     # larger than any UDP datagram
    assert c.send_errors == 1 and c.last_error == "EMSGSIZE"
    assert c.send(b"ok")
    assert r.recv(100) == b"ok"
    c.close()
    r.close()
