"""``nfflowd meter -i`` into biflow IPFIX collectors (RFC 5103), live.

The veth pair of test_meter_live.py (namespaces this test creates): known
traffic from the peer, ``nfflowd meter -i vb --inactive-timeout 1`` in the
meter's namespace exporting to three collectors on 127.0.0.1 there: a real
nfcapd with ``biflow: true``, a real nfcapd without (the uniflow oracle) and
tests/ipfix_sink.py with ``biflow: true``, which notes each record as it
arrives.  A datagram to a closed port has no answer: its record must reach
the sink alone while the meter still runs (the pairer's hold ended on the
wall clock), not only at shutdown.  nfdump then reads the biflow records:
each conversation once, the peer (the initiator) as the source, the answer
in the "out" packets and bytes, the totals those of the uniflow export.
"""

from __future__ import annotations

import ipaddress
import os
import sys
import threading
import time
from pathlib import Path

import pytest

from natlab import skip_reason, wait_for
from test_meter_live import (METER4, METER6, PEER4, PEER6, PEER_PY, PORT, ROOT, Veth,
                             nfcapd, peer)

SINK_PY = Path(__file__).resolve().parent / "ipfix_sink.py"
CLOSED = 7999           # no server there: the peer gets ICMP port unreachable

_skip = skip_reason()
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")


@pytest.fixture
def veth():
    with Veth(f"b{os.getpid() % 100000}") as v:
        yield v


PROTO = {"UDP": 17, "TCP": 6, "ICMP": 1, "ICMP6": 58, "IPv6-ICMP": 58}


def rows(collector, fmt) -> list[list]:
    out = []
    for line in collector.dump(fmt, "-6"):
        f = line.split()
        f[0], f[2] = str(ipaddress.ip_address(f[0])), str(ipaddress.ip_address(f[2]))
        f[4] = int(PROTO.get(f[4], f[4]))
        out.append(f)
    return out


def test_live_biflows(veth, tmp_path):
    bi = nfcapd(veth, tmp_path, 9995)
    uni = nfcapd(veth, tmp_path, 9996)
    sink_out = tmp_path / "sink.txt"
    sink = veth.spawn(veth.fw, sys.executable, SINK_PY, "127.0.0.1", 9997, sink_out,
                      "--lifetime", 90)
    assert "READY" in sink.stdout.readline()
    server = veth.spawn(veth.fw, sys.executable, PEER_PY, "serve", METER4, METER6,
                        "--port", PORT, "--lifetime", 60)
    assert "READY" in server.stdout.readline()
    conf = tmp_path / "bi.yaml"
    conf.write_text("export:\n  flush_interval: 0.2\n  collectors:\n"
                    "    - {host: 127.0.0.1, port: 9995, version: 10, biflow: true}\n"
                    "    - {host: 127.0.0.1, port: 9996, version: 10}\n"
                    "    - {host: 127.0.0.1, port: 9997, version: 10, biflow: true}\n"
                    "syslog:\n  enabled: false\n")
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    meter = veth.spawn(veth.fw, sys.executable, "-m", "nfflowd.cli", "-c", conf, "meter",
                       "-i", "vb", "--inactive-timeout", 1, env=env)
    log: list[str] = []
    t = threading.Thread(target=lambda: log.extend(iter(meter.stderr.readline, "")),
                         daemon=True)
    t.start()
    assert wait_for(lambda: "metering vb" in "".join(log) or meter.poll() is not None,
                    timeout=20), "".join(log)

    u4 = peer(veth, "udp", METER4, PORT, 100, 5)         # 5 datagrams, each echoed
    u6 = peer(veth, "udp", METER6, PORT, 300, 3)
    t4 = peer(veth, "tcp", METER4, PORT, 20000)
    r = veth.ns(veth.peer, sys.executable, PEER_PY, "udp", METER4, CLOSED, 100, 1,
                "--timeout", 1, check=False, timeout=30)
    lone_port = int(r.stdout.split()[2])

    def sink_has_lone():
        text = sink_out.read_text() if sink_out.exists() else ""
        return any(line.split()[2:6] == [PEER4, str(lone_port), METER4, str(CLOSED)]
                   for line in text.splitlines())

    # inactive timeout 1 s, then a hold of 1 s: out well before any shutdown
    assert wait_for(sink_has_lone, timeout=15), sink_out.read_text()
    assert meter.poll() is None, "".join(log)

    meter.terminate()
    assert meter.wait(20) == 0, "".join(log)
    t.join(5)
    time.sleep(0.5)
    bi.stop()
    uni.stop()

    fmt = "%sa %sp %da %dp %pr %pkt %byt %opkt %obyt %bfd"
    got = rows(bi, fmt)
    by_key = {tuple(g[:5]): g[5:] for g in got}
    # each of the test's conversations once (the kernel's own IPv6 chatter on
    # the veth, MLD reports from :: and router solicitations, repeats at
    # intervals that can pass the 1 s inactive timeout: two records then)
    ours = {PEER4, METER4, PEER6, METER6}
    own = [tuple(g[:5]) for g in got if g[0] in ours and g[2] in ours]
    assert len(set(own)) == len(own) >= 5, got
    # UDP echoes: the peer is the initiator, forward; the echo is the reverse.
    # On a veth the answer's first packet usually falls in the same
    # millisecond as the question's: the client port rule then makes the
    # peer forward, and biflowDirection says arbitrary (0) rather than
    # initiator (1)
    assert by_key[(PEER4, str(u4[1]), METER4, str(PORT), 17)][:4] == \
        ["5", str(5 * 128), "5", str(5 * 128)]
    assert by_key[(PEER6, str(u6[1]), METER6, str(PORT), 17)][:4] == \
        ["3", str(3 * 348), "3", str(3 * 348)]
    # TCP: the two directions of the uniflow export, in one record
    unirows = rows(uni, "%sa %sp %da %dp %pr %pkt %byt")
    uniflow = {tuple(u[:5]): u[5:] for u in unirows}
    fwd = uniflow[(PEER4, str(t4[1]), METER4, str(PORT), 6)]
    rev = uniflow[(METER4, str(PORT), PEER4, str(t4[1]), 6)]
    assert by_key[(PEER4, str(t4[1]), METER4, str(PORT), 6)][:4] == [*fwd, *rev]
    for k in ((PEER4, str(u4[1]), METER4, str(PORT), 17),
              (PEER6, str(u6[1]), METER6, str(PORT), 17),
              (PEER4, str(t4[1]), METER4, str(PORT), 6)):
        assert by_key[k][4] in ("0", "1")
    # the datagram nobody answered: alone, reverse zero; the ICMP error too
    assert by_key[(PEER4, str(lone_port), METER4, str(CLOSED), 17)] == \
        ["1", "128", "0", "0", "1"]
    icmp = [g for g in got if g[4] == 1]
    assert [g[:3] for g in icmp] == [[METER4, "0", PEER4]] and icmp[0][7:9] == ["0", "0"]
    # totals: forward plus reverse equal the uniflow export
    assert sum(int(g[5]) + int(g[7]) for g in got) == sum(int(u[5]) for u in unirows)
    assert sum(int(g[6]) + int(g[8]) for g in got) == sum(int(u[6]) for u in unirows)
    assert len(got) < len(unirows)
    said = [line for line in "".join(log).splitlines() if "biflow 127.0.0.1:" in line]
    assert len(said) == 2, "".join(log)
    assert f"{len(got)} biflow records sent" in said[0], said
