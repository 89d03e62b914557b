"""The UDP export sink, over loopback only."""

import socket
import time

import pytest

from nfflowd import flowtools
from nfflowd.export import UdpCollector
from nfflowd.netflow5 import V5Encoder, record_count

from test_flowtools import EX_BOOT_MS, EX_NOW_NS, example_flows


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
    recs = flowtools.expand(example_flows(), EX_NOW_NS, EX_BOOT_MS, "172.16.1.1")
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
    assert c.send_errors >= 1
    assert c.last_error == "ECONNREFUSED"
    assert results.count(False) == c.send_errors
    assert c.datagrams_sent == results.count(True)
    # The collector comes back on the same port: later sends reach it.
    r = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    r.bind(("127.0.0.1", port))
    r.settimeout(5)
    ok = False
    for _ in range(5):
        ok = c.send(b"back", 1)
        if ok:
            break
    assert ok
    assert r.recv(100) == b"back"
    c.close()
    r.close()


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
