"""``nfflowd meter -r`` into a biflow IPFIX collector (RFC 5103), end to end.

Each capture of tests/data/pcaps is metered once by ``nfflowd meter -r`` (a
subprocess) with three collectors on 127.0.0.1: a biflow IPFIX one and a
uniflow IPFIX one, UDP sockets of this test that keep the datagrams as they
arrive, and for some captures a real nfcapd with ``biflow: true``.  Then
independent readers decode what was sent:

- libfixbuf's ipfixDump reads both streams (written to IPFIX files): no
  error, and the biflow records are exactly the uniflow records paired: each
  forward direction is a uniflow record with the same key, counters and
  times; the reverse counters and times are those of the uniflow record of
  the reverse key; every uniflow record is used once; so the forward plus
  reverse packets and bytes equal the uniflow totals;
- tshark (the datagrams written to a pcap, ``-d udp.port==N,cflow``) shows
  the same forward and reverse values, marked "Reverse" with PEN 29305;
- nfdump 1.7.1 reads nfcapd's file: packets and bytes, the reverse ones as
  its "out" packets and bytes, the biflow direction and the forward times.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import pytest

from test_biflow import (assert_ipfixdump_clean, assert_reverse_elements_listed, ipfixdump,
                         options_records)
from test_netflow5 import write_pcap
from test_netflow9 import _port_taken, free_udp_port
from test_options import OPTIONS_FIELDS

ROOT = Path(__file__).resolve().parents[1]
PCAPS = ROOT / "tests" / "data" / "pcaps"
CAPTURES = sorted(p.name for p in PCAPS.glob("*.pcap") if p.name != "arp.pcap")
# the captures also sent to a real nfcapd and read by tshark
DEEP = ("dns.pcap", "http.pcap", "vlan.pcap", "tls.pcap")

_reason = None
if shutil.which("ipfixDump") is None:
    _reason = "needs ipfixDump (Debian: libfixbuf-tools)"
pytestmark = pytest.mark.skipif(_reason is not None, reason=_reason or "")
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="needs tshark")
needs_nfdump = pytest.mark.skipif(not (shutil.which("nfcapd") and shutil.which("nfdump")),
                                  reason="needs nfcapd and nfdump")


class Sink:
    """A UDP socket on 127.0.0.1 that keeps what it receives."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def drain(self, quiet=0.3) -> list[bytes]:
        out = []
        self.sock.settimeout(quiet)
        for _ in range(100_000):                    # bounded
            try:
                out.append(self.sock.recv(65535))
            except socket.timeout:
                break
        self.sock.close()
        return out


class Nfcapd:
    """nfcapd on 127.0.0.1 writing to ``directory``; ``stop`` ends it
    (SIGTERM writes the file) and returns nfdump's rows in ``fmt``."""

    def __init__(self, directory: Path):
        self.dir = directory
        directory.mkdir()
        self.port = free_udp_port()
        self.proc = subprocess.Popen(["nfcapd", "-w", str(directory), "-b", "127.0.0.1",
                                      "-p", str(self.port), "-t", "3600"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     text=True)
        end = time.monotonic() + 10
        while not _port_taken(self.port):
            if self.proc.poll() is not None or time.monotonic() > end:
                self.stop(None)
                raise AssertionError("nfcapd did not start")
            time.sleep(0.05)

    def stop(self, fmt):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stderr.close()
        if fmt is None:
            return None
        rows = []
        for f in sorted(self.dir.rglob("nfcapd.*")):
            if f.is_file() and "current" not in f.name:
                r = subprocess.run(["nfdump", "-q", "-N", "-r", str(f), "-o", f"fmt:{fmt}"],
                                   capture_output=True, text=True, timeout=60,
                                   env=dict(os.environ, TZ="UTC"))
                assert r.returncode == 0, r.stderr
                rows += [line.split() for line in r.stdout.splitlines() if line.strip()]
        return rows


NFDUMP_FMT = "%ts %te %sa %sp %da %dp %pr %pkt %byt %opkt %obyt %bfd"


def meter_run(tmp: Path, capture: str) -> dict:
    """Meter ``capture`` once into the three collectors."""
    bi, uni = Sink(), Sink()
    nfcapd = Nfcapd(tmp / "nfcapd") if capture in DEEP and shutil.which("nfcapd") else None
    try:
        conf = tmp / "nfflowd.yaml"
        extra = (f"    - {{host: 127.0.0.1, port: {nfcapd.port}, version: 10, "
                 "biflow: true}\n") if nfcapd else ""
        conf.write_text("export:\n  collectors:\n"
                        f"    - {{host: 127.0.0.1, port: {bi.port}, version: 10, "
                        "biflow: true}\n"
                        f"    - {{host: 127.0.0.1, port: {uni.port}, version: 10}}\n"
                        + extra + "syslog:\n  enabled: false\n")
        r = subprocess.run([sys.executable, "-m", "nfflowd.cli", "-c", str(conf), "meter",
                            "-r", str(PCAPS / capture)], capture_output=True, text=True,
                           timeout=120, cwd=ROOT)
        assert r.returncode == 0, r.stderr
        out = {"bi": bi.drain(), "uni": uni.drain(), "stderr": r.stderr}
        out["nfdump"] = nfcapd.stop(NFDUMP_FMT) if nfcapd else None
        nfcapd = None
    finally:
        if nfcapd is not None:
            nfcapd.stop(None)
    return out


_RUNS: dict = {}        # capture name -> its meter run (one per capture and module)
_DECODED: dict = {}     # capture name -> what ipfixDump read of it


def _run_of(name: str, tmp_path_factory) -> dict:
    if name not in _RUNS:
        tmp = tmp_path_factory.mktemp(name.replace(".", "_"))
        out = meter_run(tmp, name)
        out["name"] = name
        out["tmp"] = tmp
        _RUNS[name] = out
    return _RUNS[name]


@pytest.fixture(scope="module", params=CAPTURES)
def run(request, tmp_path_factory):
    return _run_of(request.param, tmp_path_factory)


@pytest.fixture(scope="module", params=[c for c in DEEP if c in CAPTURES])
def deep_run(request, tmp_path_factory):
    """The captures also sent to a real nfcapd and read by tshark."""
    return _run_of(request.param, tmp_path_factory)


# -- ipfixDump ------------------------------------------------------------------------



def utc_ms(text: str) -> int:
    t = dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=dt.timezone.utc)
    return round(t.timestamp() * 1000)


def key(r: dict, reverse=False) -> tuple:
    src = r.get("sourceIPv4Address") or r.get("sourceIPv6Address")
    dst = r.get("destinationIPv4Address") or r.get("destinationIPv6Address")
    sport = int(r.get("sourceTransportPort", 0))
    dport = int(r.get("destinationTransportPort", r.get("icmpTypeCodeIPv4",
                                                        r.get("icmpTypeCodeIPv6", 0))))
    k = (ipaddress.ip_address(src), ipaddress.ip_address(dst), sport, dport,
         int(r["protocolIdentifier"]), int(r.get("vlanId", 0)))
    return k


def values(r: dict, prefix="") -> tuple:
    """(packets, octets, start ms, end ms) of the forward (or reverse) side."""
    def name(n):
        return prefix + n[0].upper() + n[1:] if prefix else n
    return (int(r[name("packetDeltaCount")]), int(r[name("octetDeltaCount")]),
            utc_ms(r[name("flowStartMilliseconds")]), utc_ms(r[name("flowEndMilliseconds")]))


def icmp_reverse_dport(proto: int, dport: int) -> int:
    pairs = {1: {8: 0, 0: 8, 13: 14, 14: 13, 15: 16, 16: 15, 17: 18, 18: 17},
             58: {128: 129, 129: 128, 139: 140, 140: 139, 135: 136, 136: 135}}
    return (pairs[proto][dport >> 8] << 8) | (dport & 0xFF)


def reverse_of(k: tuple) -> tuple:
    src, dst, sport, dport, proto, vlan = k
    if proto in (1, 58):
        return (dst, src, 0, icmp_reverse_dport(proto, dport), proto, vlan)
    return (dst, src, dport, sport, proto, vlan)


def _decoded_of(run: dict) -> tuple:
    if run["name"] not in _DECODED:
        tmp = run["tmp"]
        bi, bi_text = ipfixdump(tmp / "bi.ipfix", run["bi"])
        uni, uni_text = ipfixdump(tmp / "uni.ipfix", run["uni"])
        _DECODED[run["name"]] = (bi, uni, bi_text, uni_text)
    return _DECODED[run["name"]]


@pytest.fixture(scope="module")
def decoded(run):
    return _decoded_of(run)


def test_ipfixdump_reads_both_streams_cleanly(run, decoded):
    bi, uni, bi_text, uni_text = decoded
    for text in (bi_text, uni_text):
        assert_ipfixdump_clean(text)
    assert uni, run["stderr"]
    n_flows = int(re.search(r"(\d+) flows exported", run["stderr"]).group(1))
    assert len(uni) == n_flows
    n = len(bi) + options_records(bi_text)
    assert options_records(bi_text) and options_records(uni_text)
    assert f"{len(run['bi'])} Messages, {n} Data Records" in bi_text
    assert_reverse_elements_listed(bi_text)


def test_biflow_records_are_the_uniflow_records_paired(run, decoded):
    bi, uni, _, _ = decoded
    pool = Counter((key(r), values(r)) for r in uni)
    pairs = 0
    for r in bi:
        k = key(r)
        fwd = (k, values(r))
        assert pool[fwd] > 0, ("forward not among the uniflow records", fwd)
        pool[fwd] -= 1
        rev_vals = values(r, "reverse")
        if rev_vals[0] == 0:                # exported alone: reverse values zero
            assert rev_vals == (0, 0, 0, 0), r
            assert r["biflowDirection"] == "1"
            continue
        pairs += 1
        rev = (reverse_of(k), rev_vals)
        assert pool[rev] > 0, ("reverse not among the uniflow records", rev)
        pool[rev] -= 1
        # the initiator is forward: biflowDirection 1 when its first packet
        # came first, 0 (arbitrary) or 1 (an ICMP query) on a tie
        assert fwd[1][2] <= rev_vals[2]
        assert r["biflowDirection"] in (("1",) if fwd[1][2] < rev_vals[2] else ("0", "1"))
        # both within the hold (the meter's inactive timeout, 30 s) of each other
        assert rev_vals[2] <= fwd[1][3] + 30_000 and fwd[1][2] <= rev_vals[3] + 30_000
    assert +pool == Counter(), "uniflow records missing from the biflow export"
    assert len(bi) == len(uni) - pairs
    # the summary says so, for each biflow collector
    said = re.findall(r"biflow 127\.0\.0\.1:\d+/v10: (\d+) pairs, (\d+) records alone, "
                      r"(\d+) biflow records sent", run["stderr"])
    assert said and set(said) == {(str(pairs), str(len(bi) - pairs), str(len(bi)))}, said
    if run["name"] in ("dns.pcap", "http.pcap", "tls.pcap", "smtp.pcap", "ntp.pcap"):
        # conversations both ways: every record has its partner
        assert pairs > 0 and len(bi) < len(uni)
    totals_uni = [sum(values(r)[i] for r in uni) for i in (0, 1)]
    totals_bi = [sum(values(r)[i] + values(r, "reverse")[i] for r in bi) for i in (0, 1)]
    assert totals_bi == totals_uni


def test_vlan_ids_survive_the_pairing(tmp_path_factory):
    bi, uni, _, _ = _decoded_of(_run_of("vlan.pcap", tmp_path_factory))
    vlans = {r["vlanId"] for r in uni}
    assert vlans - {"0"}, vlans
    assert {r["vlanId"] for r in bi} == vlans


# -- tshark ---------------------------------------------------------------------------------

def tshark_flows(pcap: Path, port: int) -> list[dict]:
    """Each flow record tshark's cflow dissector shows: forward and reverse
    octets and packets (the reverse ones marked "Reverse" by tshark); not
    the options records (nfflowd.options)."""
    res = subprocess.run(["tshark", "-r", str(pcap), "-d", f"udp.port=={port},cflow",
                          "-T", "pdml"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = []
    for flow in ET.fromstring(res.stdout).iter("field"):
        if not re.fullmatch(r"Flow \d+", flow.get("show", "")):
            continue
        rec = {"octets": [], "packets": []}
        for f in flow.iter("field"):
            name, shown = f.get("name"), f.get("showname", "")
            if name in OPTIONS_FIELDS:
                rec["options"] = True
            elif name in ("cflow.octets", "cflow.packets"):
                side = "rev" if "Reverse" in shown else "fwd"
                rec[name[6:]].append((side, int(f.get("show"))))
            elif name in ("cflow.srcaddr", "cflow.srcaddrv6"):
                rec["src"] = ipaddress.ip_address(f.get("show"))
            elif name == "cflow.biflow_direction":
                rec["dir"] = int(f.get("show"))
        if not rec.pop("options", False):
            out.append(rec)
    return out


@needs_tshark
def test_tshark_shows_the_reverse_values(deep_run):
    run = deep_run
    bi, _, _, _ = _decoded_of(run)
    port = 4739
    pcap = run["tmp"] / "bi.pcap"
    write_pcap(pcap, run["bi"], dport=port)
    problems = subprocess.run(["tshark", "-r", str(pcap), "-d", f"udp.port=={port},cflow",
                               "-Y", "_ws.malformed or _ws.expert"],
                              capture_output=True, text=True, timeout=120)
    assert problems.returncode == 0 and problems.stdout.strip() == "", problems.stdout
    flows = tshark_flows(pcap, port)
    assert len(flows) == len(bi)
    got = sorted((str(f["src"]), tuple(f["packets"]), tuple(f["octets"]), f["dir"])
                 for f in flows)
    want = sorted((str(key(r)[0]),
                   (("fwd", int(r["packetDeltaCount"])),
                    ("rev", int(r["reversePacketDeltaCount"]))),
                   (("fwd", int(r["octetDeltaCount"])),
                    ("rev", int(r["reverseOctetDeltaCount"]))),
                   int(r["biflowDirection"])) for r in bi)
    assert got == want
    # and tshark knows the PEN
    res = subprocess.run(["tshark", "-r", str(pcap), "-d", f"udp.port=={port},cflow", "-V"],
                         capture_output=True, text=True, timeout=120)
    assert "IPFIX Reverse Information Element Private Enterprise (29305)" in res.stdout


# -- nfcapd / nfdump ----------------------------------------------------------------------------

@needs_nfdump
def test_nfdump_reads_the_biflow_records(deep_run):
    run = deep_run
    bi, _, _, _ = _decoded_of(run)
    rows = run["nfdump"]
    assert rows is not None and len(rows) == len(bi)

    def fmt(ms):
        return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).strftime(
            "%Y-%m-%d %H:%M:%S.%f")[:-3]

    want = []
    for r in bi:
        k = key(r)
        p, o, s, e = values(r)
        rp, ro, _, _ = values(r, "reverse")
        dport = k[3] if k[4] not in (1, 58) else f"{k[3] >> 8}.{k[3] & 0xFF}"
        want.append([*fmt(s).split(), *fmt(e).split(), str(k[0]), str(k[2]), str(k[1]),
                     str(dport), str(k[4]), str(p), str(o), str(rp), str(ro),
                     r["biflowDirection"]])
    got = [[*row[:8], str({"TCP": 6, "UDP": 17, "ICMP": 1, "ICMP6": 58}.get(row[8], row[8])),
            *row[9:]] for row in rows]
    assert sorted(got) == sorted(want)
