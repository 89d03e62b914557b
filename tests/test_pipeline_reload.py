"""Pipeline.prepare / apply / discard, the reload's building blocks, on
loopback UDP sockets: exporters whose settings did not change are kept
(the same socket and sequence), a changed one continues its collector's
sequence and counters, the syslog mirror is kept or replaced with its
counters carried, and a refused plan changes nothing (what was built for it
is closed)."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from nfflowd.app import config
from nfflowd.app.pipeline import Pipeline
from nfflowd.record import END_OF_FLOW, ORIGINAL, REPLY, Flow, FlowBatch

NOW_NS = 1_800_000_000 * 10**9
UPTIME_MS = 50_000_000


def flows(n: int) -> list[Flow]:
    ip = lambda a: ipaddress.ip_address(a).packed  # noqa: E731
    out = []
    for i in range(n):
        t = NOW_NS // 10**6
        out.append(Flow(4, 17, ip("198.51.100.7"), ip("203.0.113.9"), 40000 + i, 53,
                        ip("203.0.113.1"), ip("203.0.113.9"), 50000 + i, 53, 1, 80,
                        t - 900, t - 800, ORIGINAL, END_OF_FLOW, conn_id=i + 1))
        out.append(Flow(4, 17, ip("203.0.113.9"), ip("203.0.113.1"), 53, 50000 + i,
                        ip("203.0.113.9"), ip("198.51.100.7"), 53, 40000 + i, 1, 120,
                        t - 890, t - 800, REPLY, END_OF_FLOW, conn_id=i + 1))
    return out


class Udp:
    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.settimeout(2)
        self.port = self.sock.getsockname()[1]

    def recv_all(self) -> list[bytes]:
        out = []
        self.sock.settimeout(0.3)
        try:
            while True:
                out.append(self.sock.recv(65535))
        except socket.timeout:
            return out


class Syslog:
    def __init__(self, path):
        self.path = str(path)
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)


def cfg(v5, v9, syslog, v9_records=("flows",), extra=()):
    return config.parse({
        "export": {"collectors": [
            {"host": "127.0.0.1", "port": v5.port, "version": 5},
            {"host": "127.0.0.1", "port": v9.port, "version": 9, "records": list(v9_records)},
            *extra]},
        "syslog": {"address": syslog.path}})


@pytest.fixture
def parts(tmp_path):
    v5, v9, other = Udp(), Udp(), Udp()
    s1, s2 = Syslog(tmp_path / "s1.sock"), Syslog(tmp_path / "s2.sock")
    yield v5, v9, other, s1, s2
    for x in (v5, v9, other, s1, s2):
        x.sock.close()


def test_reload_keeps_what_did_not_change_and_counts_on(parts):
    v5, v9, other, s1, s2 = parts
    p = Pipeline(cfg(v5, v9, s1))
    p.open()
    try:
        p.export(FlowBatch.from_flows(flows(2)), [], NOW_NS, UPTIME_MS)
        first = p.summary()
        e5, e9, mirror = p.exporters[0], p.exporters[1], p.mirror
        sock5 = e5.sink.sock

        # syslog moved, collectors unchanged: the same exporters and sockets
        plan = p.prepare(cfg(v5, v9, s2))
        assert plan.built == [] and plan.mirror is not mirror
        p.apply(plan)
        assert p.exporters[0] is e5 and p.exporters[1] is e9 and e5.sink.sock is sock5
        p.export(FlowBatch.from_flows(flows(1)), [], NOW_NS, UPTIME_MS)

        # the v9 collector's records changed: a new exporter, its sequence
        # and counters continued
        seq9 = e9.encoder.sequence
        p.apply(p.prepare(cfg(v5, v9, s2, v9_records=("flows", "nat_events"))))
        assert p.exporters[0] is e5 and p.exporters[1] is not e9
        # (each v9 exporter's first datagram is its options: nfflowd.options)
        assert p.exporters[1].encoder.sequence == seq9 == 3
        p.export(FlowBatch.from_flows(flows(1)), [], NOW_NS, UPTIME_MS)
        last = p.summary()
    finally:
        p.close()
    n5, n9 = f"127.0.0.1:{v5.port}/v5", f"127.0.0.1:{v9.port}/v9"
    assert first[f"{n5}.records"] == 6 and first[f"{n9}.records"] == 4
    assert last[f"{n5}.records"] == 12 and last[f"{n9}.records"] == 8
    assert last["syslog_lines"] == 12 and last[f"{n9}.datagrams"] == 3 + 2
    for k, v in first.items():
        if isinstance(v, int) and k != "syslog_backlog":
            assert last[k] >= v, (k, v, last[k])
    # on the wire: v5 flow_sequence and v9 sequence with no restart
    v5_seq = [struct.unpack_from("!I", d, 16)[0] for d in v5.recv_all()]
    got9 = v9.recv_all()
    v9_seq = [struct.unpack_from("!I", d, 12)[0] for d in got9]
    assert v5_seq == [0, 6, 9] and v9_seq == [0, 1, 2, 3, 4], (v5_seq, v9_seq)
    # the options' exporter statistics continue too: the new exporter's
    # first counts the old one's 3 datagrams and 6 records
    from test_options import read
    stats = read(9, got9).by_template(514)
    assert [(x["exportedMessageTotalCount"], x["exportedFlowRecordTotalCount"])
            for x in stats] == [(0, 0), (3, 6)]
    assert len(s1.sock.recv(4096)) and len(s2.sock.recv(4096))


def test_a_refused_plan_changes_nothing_and_is_closed(parts):
    """(A host that does not resolve is tested in a namespace, test_reload.py:
    here it would ask this machine's DNS.)"""
    v5, v9, other, s1, s2 = parts
    p = Pipeline(cfg(v5, v9, s1))
    p.open()
    try:
        before = (list(p.exporters), p.mirror)
        # built, then refused (the daemon's metrics endpoint, say)
        plan = p.prepare(cfg(v5, v9, s2, extra=(
            {"host": "127.0.0.1", "port": other.port, "version": 10},)))
        assert len(plan.built) == 1 and plan.mirror is not p.mirror
        p.discard(plan)
        assert plan.built[0].sink.sock.fileno() == -1
        assert (p.exporters, p.mirror) == before and p.cfg.syslog.address == s1.path
        p.export(FlowBatch.from_flows(flows(1)), [], NOW_NS, UPTIME_MS)
        assert other.recv_all() == [] and len(v5.recv_all()) == 1
        assert s1.sock.recv(4096)
    finally:
        p.close()
