"""v9/IPFIX templates on their own timer: a quiet exporter still refreshes
them every template_refresh_seconds, in templates-only datagrams that keep
each protocol's sequence rule (v9 counts every datagram, IPFIX counts data
records).  The encoder's side sans-IO (time passed in), then the daemon on
a real NAT with UDP collectors, its IPFIX stream read by libfixbuf's
ipfixDump."""

from __future__ import annotations

import ipaddress
import shutil
import struct
import sys
import textwrap

import pytest

from natlab import WAN4, NatLab, skip_reason, stop, wait_for
from nfflowd.ipfix import IpfixEncoder
from nfflowd.netflow9 import NetflowV9Encoder
from nfflowd.record import END_OF_FLOW, ORIGINAL, Flow, FlowBatch
from test_e2e_ipfix_tcp import counts, ipfix_dump
from test_e2e_nat import SyslogCatcher, start_nfflowd

V9_HEADER = struct.Struct("!HHIIII")
IPFIX_HEADER = struct.Struct("!HHIII")
T0 = 1_800_000_000_000          # ms


def flow(n: int = 0) -> Flow:
    ip = ipaddress.ip_address
    return Flow(4, 6, ip("198.51.100.7").packed, ip("203.0.113.9").packed, 40000 + n, 80,
                ip("203.0.113.1").packed, ip("203.0.113.9").packed, 50000 + n, 80,
                5, 500, T0 - 2000, T0 - 1000, ORIGINAL, END_OF_FLOW, conn_id=1)


def sets(message: bytes, header: int) -> list[int]:
    out, off = [], header
    while off + 4 <= len(message):
        sid, ln = struct.unpack_from("!HH", message, off)
        out.append(sid)
        off += max(ln, 4)
    return out


def test_v9_templates_go_on_their_own_timer_and_count_in_the_sequence():
    enc = NetflowV9Encoder(7, records=("flows",), template_refresh_packets=0,
                           template_refresh_seconds=60)
    assert enc.refresh_templates(T0) == []              # before any data: nothing
    first = enc.encode(FlowBatch.from_flows([flow()]), [], T0, T0 - 5000)
    assert sets(first[0], 20) == [0, 256]               # templates, then data
    assert enc.refresh_templates(T0 + 59_999, T0 - 5000) == []
    [tpl] = enc.refresh_templates(T0 + 60_000, T0 - 5000)
    version, count, uptime, secs, seq, source = V9_HEADER.unpack_from(tpl)
    assert (version, count, uptime, secs, seq, source) == \
        (9, len(enc.templates), 65_000, (T0 + 60_000) // 1000, 1, 7)
    assert sets(tpl, 20) == [0]                          # templates only
    assert enc.refresh_templates(T0 + 60_500, T0 - 5000) == []
    # the next data does not repeat them, and its sequence follows
    [data] = enc.encode(FlowBatch.from_flows([flow(1)]), [], T0 + 61_000, T0 - 5000)
    assert sets(data, 20) == [256] and V9_HEADER.unpack_from(data)[4] == 2
    assert enc.template_sends == 2 and enc.records_sent == 2
    assert enc.last_counts == [1]


def test_ipfix_templates_only_message_keeps_the_data_record_sequence():
    enc = IpfixEncoder(3, template_refresh_packets=20, template_refresh_seconds=30)
    enc.encode(FlowBatch.from_flows([flow(0), flow(1)]), [], T0)
    [tpl] = enc.refresh_templates(T0 + 30_000)
    version, length, export_s, seq, domain = IPFIX_HEADER.unpack_from(tpl)
    assert (version, length, seq, domain) == (10, len(tpl), 2, 3)
    assert sets(tpl, 16) == [2]
    [data] = enc.encode(FlowBatch.from_flows([flow(2)]), [], T0 + 30_001)
    assert IPFIX_HEADER.unpack_from(data)[3] == 2 and sets(data, 16) == [256]
    # no timer without template_refresh_seconds (IPFIX over TCP, say)
    enc = IpfixEncoder(3, template_refresh_seconds=0)
    enc.encode(FlowBatch.from_flows([flow()]), [], T0)
    assert enc.refresh_templates(T0 + 10**9) == []


# -- the daemon ----------------------------------------------------------------------

_reason = skip_reason() or (None if shutil.which("ipfixDump")
                            else "needs ipfixDump (Debian: libfixbuf-tools)")

UDP_RECEIVER = textwrap.dedent("""
    import socket, struct, sys, time
    out, port, lifetime = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", port)); s.settimeout(0.2)
    print("READY", flush=True)
    end = time.monotonic() + lifetime
    with open(out, "wb") as f:
        while time.monotonic() < end:
            try:
                d = s.recv(65535)
            except socket.timeout:
                continue
            f.write(struct.pack("!I", len(d)) + d); f.flush()
""")


def udp_receiver(lab, path, port, lifetime=60):
    p = lab.spawn(lab.fw, sys.executable, "-c", UDP_RECEIVER, path, port, lifetime)
    assert "READY" in p.stdout.readline()
    return p


def datagrams(path) -> list[bytes]:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    out, off = [], 0
    while off + 4 <= len(data):
        n = struct.unpack_from("!I", data, off)[0]
        if off + 4 + n > len(data):
            break
        out.append(data[off + 4:off + 4 + n])
        off += 4 + n
    return out


def templates_only(messages, header) -> list[bytes]:
    template_set = 0 if header == 20 else 2
    return [m for m in messages if sets(m, header) == [template_set]]


@pytest.mark.root
@pytest.mark.skipif(_reason is not None, reason=_reason or "")
def test_a_quiet_daemon_refreshes_the_templates_on_a_timer(tmp_path):
    with NatLab() as lab:
        lab.start_servers(lifetime=120)
        v9 = udp_receiver(lab, tmp_path / "v9.bin", 20621)
        ipfix = udp_receiver(lab, tmp_path / "ipfix.bin", 20622)
        catcher = SyslogCatcher(tmp_path / "log.sock")
        cfg = tmp_path / "nfflowd.yaml"
        cfg.write_text(f"""
export:
  source: 203.0.113.1
  flush_interval: 0.2
  template_refresh_seconds: 2
  template_refresh_packets: 1000
  collectors:
    - {{host: 127.0.0.1, port: 20621, version: 9}}
    - {{host: 127.0.0.1, port: 20622, version: 10}}
syslog: {{enabled: true, address: {catcher.path}}}
conntrack: {{poll_interval: 1}}
pidfile: {tmp_path}/nfflowd.pid
""")
        daemon, log = start_nfflowd(lab, cfg)
        try:
            lab.client("tcp", WAN4, 8080, 300)
            lab.flush()
            assert wait_for(lambda: datagrams(tmp_path / "v9.bin")
                            and datagrams(tmp_path / "ipfix.bin"), timeout=20)
            # quiet from now on: the templates keep coming, on their own
            assert wait_for(lambda: len(templates_only(datagrams(tmp_path / "v9.bin"), 20)) >= 2
                            and len(templates_only(datagrams(tmp_path / "ipfix.bin"), 16)) >= 2,
                            timeout=15)
            lab.client("tcp", WAN4, 8080, 300)          # and the data goes on after them
            lab.flush()
            assert wait_for(lambda: len(catcher.collect()) >= 6, timeout=20)
        finally:
            stop(daemon)
            stop(v9)
            stop(ipfix)
        daemon.log_reader.join(5)
        assert daemon.returncode == 0, "".join(log)

    v9m = datagrams(tmp_path / "v9.bin")
    tpl = templates_only(v9m, 20)
    assert len(tpl) >= 2 and len(v9m) >= 4, [sets(m, 20) for m in v9m]
    headers = [V9_HEADER.unpack_from(m) for m in v9m]
    # v9: every datagram counts in the sequence, templates-only ones too
    assert [h[4] for h in headers] == list(range(len(v9m))), headers
    for m in tpl:
        assert V9_HEADER.unpack_from(m)[1] == 10        # ten templates, no data record
    ipm = datagrams(tmp_path / "ipfix.bin")
    assert len(templates_only(ipm, 16)) >= 2
    # IPFIX: read by libfixbuf as one stream (it warns about a sequence
    # out of order); the templates-only messages do not advance it
    (tmp_path / "ipfix.stream").write_bytes(b"".join(ipm))
    dump, err = ipfix_dump(tmp_path / "ipfix.stream")
    assert "warn" not in err.lower() and "sequence" not in err.lower(), err
    c = counts(dump)
    assert c["data"] == 8 and c["templates"] >= 6 * (1 + 2), (c, dump)
    # the options records (sampling, statistics, interface names) with
    # every refresh
    assert c["options"] >= 2 * (1 + 2), (c, dump)
