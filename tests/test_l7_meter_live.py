"""``nfflowd meter -i IFACE --l7 all``: live capture on a veth pair in
namespaces the test creates (tests/test_meter_live.py's), a DNS query and a
TLS ClientHello too long for one segment sent from the peer; the records
printed as JSON carry the query's name and the ClientHello's server name,
and the default snaplen is raised to 384 bytes (the summary counts the
packets whose payload it cut)."""

from __future__ import annotations

import json
import os
import re
import struct
import sys
import time

import pytest

from test_l7_meter import _missing
from test_meter_live import METER4, PEER4, PEER_PY, PORT, Meter, Veth
from natlab import skip_reason

_skip = skip_reason()
pytestmark = pytest.mark.skipif(_skip is not None, reason=_skip or "")

@pytest.fixture
def veth():
    with Veth(f"l7{os.getpid()}") as v:
        yield v


SNI = "live.example.com"
QNAME = "l7.example.org"


def client_hello(sni: str, pad: int) -> bytes:
    """A TLS 1.3 ClientHello naming ``sni``, ``pad`` bytes of padding
    extension (RFC 7685) after the server name."""
    name = sni.encode()
    sn = struct.pack("!HBH", len(name) + 3, 0, len(name)) + name
    ext = struct.pack("!HH", 0, len(sn)) + sn
    alpn = b"\x00\x0c\x02h2\x08http/1.1"
    ext += struct.pack("!HH", 16, len(alpn)) + alpn
    ext += struct.pack("!HH", 43, 3) + b"\x02\x03\x04"
    ext += struct.pack("!HH", 21, pad) + bytes(pad)
    suites = struct.pack("!3H", 0x1301, 0x1302, 0x1303)
    body = (b"\x03\x03" + bytes(32) + b"\x20" + bytes(32) + struct.pack("!H", len(suites))
            + suites + b"\x01\x00" + struct.pack("!H", len(ext)) + ext)
    hs = b"\x01" + struct.pack("!I", len(body))[1:] + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


CLIENT = f"""
import socket, struct, sys, time
hello = bytes.fromhex(sys.argv[1])
q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
q += b"".join(bytes([len(p)]) + p.encode() for p in "{QNAME}".split(".")) + b"\\0"
q += struct.pack("!HH", 1, 1)
u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
u.sendto(q, ("{METER4}", 53))
t = socket.create_connection(("{METER4}", {PORT}), timeout=5)
t.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
t.sendall(hello)
got = b""
end = time.monotonic() + 5
while len(got) < len(hello) and time.monotonic() < end:
    got += t.recv(65536)
t.close()
"""


@pytest.mark.skipif("tls" in _missing(), reason="no TLS parser in nfflowd.l7 yet")
def test_live_records_carry_the_dns_name_and_the_split_client_hellos_server_name(veth,
                                                                                  tmp_path):
    dns_on = "dns" not in _missing()
    protos = "tls,dns" if dns_on else "tls"
    hello = client_hello(SNI, 2000)             # > one 1500-byte segment
    server = veth.spawn(veth.fw, sys.executable, PEER_PY, "serve", METER4, "--port", PORT,
                        "--lifetime", 60)
    assert "READY" in server.stdout.readline()
    # a snaplen that keeps both segments whole, and the default one (raised to 384)
    whole = Meter(veth, tmp_path, 9, "--l7", protos, "-s", "4096", "--print", "--format",
                  "json", name="whole")
    small = Meter(veth, tmp_path, 9, "--l7", protos, "--print", "--format", "json",
                  name="small")
    whole.wait_ready()
    small.wait_ready()
    veth.ns(veth.peer, sys.executable, "-c", CLIENT, hello.hex(), timeout=30)
    time.sleep(0.5)
    assert whole.finish() == 0, whole.err
    assert small.finish() == 0, small.err
    rows = [json.loads(x) for x in whole.proc.stdout.read().splitlines()]
    dns = [r for r in rows if r["dport"] == 53 and r["src"] == PEER4]
    assert len(dns) == 1
    if dns_on:
        assert (dns[0]["dns_qname"], dns[0]["dns_qtype"]) == (QNAME, 1)
    tls = [r for r in rows if r["dport"] == PORT and r["src"] == PEER4 and r["proto"] == 6]
    assert len(tls) == 1 and tls[0]["tls_sni"] == SNI, tls
    assert re.search(r"l7: \d+ payloads inspected", whole.err)
    # 384 bytes of each packet: the DNS query whole, the ClientHello cut
    assert "--l7 captures 384 bytes of each packet (snaplen 256 raised)" in small.err
    assert re.search(r"\d+ TCP/UDP packets whose payload the snaplen cut", small.err), small.err
    rows = [json.loads(x) for x in small.proc.stdout.read().splitlines()]
    if dns_on:
        assert [r.get("dns_qname") for r in rows if r["dport"] == 53 and r["src"] == PEER4] \
            == [QNAME]
