"""pmacct's nfacctd (Debian's pmacct) as a collector of NetFlow v9 and
IPFIX: the sample flows' ingress and egress interfaces (``iface_in``,
``iface_out`` of its print plugin's JSON), with the addresses, ports and
counters it reads beside them.  nfacctd listens on 127.0.0.1 only and is
stopped by the test (and bounded by a timeout of its own)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from nfflowd.ipfix import IpfixEncoder
from nfflowd.netflow9 import NetflowV9Encoder
from nfflowd.record import FlowBatch

from test_netflow9 import (BOOT, T0, _addr, _port_taken, free_udp_port, sample_flows,
                           sample_nat_events)

pytestmark = pytest.mark.skipif(shutil.which("nfacctd") is None,
                                reason="needs nfacctd (Debian: pmacct)")

PROTO = {6: "tcp", 17: "udp", 1: "icmp", 58: "ipv6-icmp", 47: "gre"}


@contextlib.contextmanager
def local_nfacctd(out: Path, port: int):
    """nfacctd on 127.0.0.1:``port``, its print plugin writing JSON lines
    into ``out`` every second (records filed at their arrival: the samples'
times are of 2023); bound before the body runs, stopped after."""
    conf = out / "nfacctd.conf"
    conf.write_text(f"""daemonize: false
nfacctd_ip: 127.0.0.1
nfacctd_port: {port}
plugins: print[p]
print_output[p]: json
print_output_file[p]: {out}/flows-%s.json
print_refresh_time[p]: 1
print_history[p]: 1m
aggregate[p]: src_host, dst_host, src_port, dst_port, proto, in_iface, out_iface
nfacctd_time_new: true
""")
    log = out / "nfacctd.log"
    # nfacctd ends on SIGINT (on SIGTERM its core stays up); "timeout" sends
    # it should the test not; its own process group, its plugin with it
    with open(log, "w") as err:
        proc = subprocess.Popen(["timeout", "-s", "INT", "-k", "5", "120", "nfacctd", "-f",
                                 str(conf)], stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True)
    try:
        # bound, and its print plugin running (it has purged its cache
        # once): what the core takes before that can be lost, templates too
        end = time.monotonic() + 15
        while not (_port_taken(port) and "Purging cache - END" in log.read_text()):
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < end, "nfacctd did not start: " + log.read_text()
            time.sleep(0.05)
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)     # whatever is left of the group
        proc.wait()


def rows(out: Path) -> list[dict]:
    got = []
    for f in sorted(out.glob("flows-*.json")):
        got += [json.loads(line) for line in f.read_text().splitlines() if line.strip()]
    return got


def collect(tmp_path, datagrams, want: int) -> list[dict]:
    """The flow rows (those with counters: NAT events carry none) nfacctd
    printed of ``datagrams``, once ``want`` of them are there."""
    port = free_udp_port()
    with local_nfacctd(tmp_path, port):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for d in datagrams:
                s.sendto(d, ("127.0.0.1", port))
                time.sleep(0.005)
        end = time.monotonic() + 20
        while len([r for r in rows(tmp_path) if "packets" in r]) < want:
            assert time.monotonic() < end, rows(tmp_path)
            time.sleep(0.2)
    return [r for r in rows(tmp_path) if "packets" in r]


def expected(flows) -> list[tuple]:
    out = []
    for f in flows:
        icmp = f.proto in (1, 58)
        out.append((str(_addr(f.src)), str(_addr(f.dst)), 0 if icmp else f.sport,
                    0 if icmp else f.dport, PROTO[f.proto], f.packets, f.octets, f.in_if,
                    f.out_if))
    return sorted(out)


@pytest.mark.parametrize("version", [9, 10])
def test_nfacctd_reads_the_interfaces(tmp_path, version):
    flows = sample_flows()
    if version == 9:
        ds = NetflowV9Encoder(source_id=5, max_size=600).encode(
            FlowBatch.from_flows(flows), sample_nat_events(), T0, BOOT)
    else:
        ds = IpfixEncoder(domain_id=5, max_size=600).encode(
            FlowBatch.from_flows(flows), sample_nat_events(), T0)
    got = collect(tmp_path, ds, len(flows))
    assert sorted((r["ip_src"], r["ip_dst"], r["port_src"], r["port_dst"], r["ip_proto"],
                   r["packets"], r["bytes"], r["iface_in"], r["iface_out"])
                  for r in got) == expected(flows)
    # spot checks against the sample's comment rather than the helper
    by_src = {(r["ip_src"], r["ip_proto"]): (r["iface_in"], r["iface_out"]) for r in got}
    assert by_src[("198.51.100.7", "tcp")] == (2, 3)
    assert by_src[("203.0.113.9", "tcp")] == (3, 2)
    assert by_src[("198.51.100.7", "icmp")] == (0, 3)
    assert by_src[("198.51.100.8", "gre")] == (70000, 0)
