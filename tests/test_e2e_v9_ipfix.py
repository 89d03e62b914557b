"""End to end on a real NAT for NetFlow v9 and IPFIX (issue 4).

Namespaces lan, fw, wan (see natlab.py); nftables masquerades in fw for IPv4
and IPv6.  nfflowd runs in fw with two collectors, both real nfcapd on
127.0.0.1 in fw: NetFlow v9 (source id from ``export.observation_domain``)
and IPFIX (its own ``observation_domain``), NAT events with the legacy codes
(nfdump 1.7.1 names only 1 ADD / 2 DELETE), templates refreshed every
``REFRESH_S`` seconds.  dumpcap captures every export datagram on lo in fw.

The run, done once for the module (``run_result`` fixture, about 10 s):

1. phase 1: TCP, UDP and ICMP over IPv4 and IPv6 through the NAT;
   ``conntrack -L`` is recorded, then ``conntrack -F`` ends everything;
2. the v9 nfcapd is stopped and a new one started on the same port with a
   fresh directory: it has never seen a template;
3. phase 2: more connections at once (their NAT create events usually
   reach the new collector in a datagram without templates: lost there),
   ended (``conntrack -L``, ``conntrack -F``) once the refresh interval has
   passed since the templates were last sent: the new collector must decode
   from the refreshed templates on.  ``REFRESH_S`` is 6 rather than 2 so
   that phase 1 and the restart fit in one interval and the loss really
   happens first; the test checks both cases and prints which it saw.

Then each test checks one property of what was exported: the records
nfdump reads from every collector's files against the ``conntrack -L`` counts
and translations, the NAT events, absolute timestamps, the capture (complete,
clean in tshark's cflow dissector, read by libfixbuf's ipfixDump), the
template recovery at the new collector, the observation domains.  The
flow records' interfaces (``%in %out %dir``) are fw's own indexes of the
interfaces crossed (fw-lan then fw-wan, the reply's swapped, both ingress),
found by the daemon's route lookup.

Where nfdump 1.7.1 cannot show a field, tshark checks it (see ``NFDUMP_BLIND``).
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pytest

from natlab import (LAN4, LAN6, WAN4, WAN6, Capture, NatLab, Nfcapd, run, skip_reason, stop,
                    udp_listening, wait_for)
from test_e2e_nat import in_lab, start_nfflowd
from test_options import OPTIONS_FIELDS, options_records

_reason = skip_reason()
for _tool, _pkg in (("nfcapd", "nfdump"), ("nfdump", "nfdump"), ("dumpcap", "wireshark-common"),
                    ("tshark", "tshark"), ("ss", "iproute2")):
    if _reason is None and shutil.which(_tool) is None:
        _reason = f"needs the '{_tool}' command (Debian: {_pkg})"
if _reason is not None:
    print(f"test_e2e_v9_ipfix skipped: {_reason}", file=sys.stderr)
pytestmark = [pytest.mark.root, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

PORT9, PORT10 = 20556, 20557
DOMAIN9, DOMAIN10 = 77, 1010        # v9: export.observation_domain; IPFIX: its own
REFRESH_S = 6                       # export.template_refresh_seconds
# %ts/%te in local time, as nfdump prints them (its %ter is wrong in 1.7.1: the
# seconds of the end with the milliseconds of something else); %msec is the
# NAT event time (epoch ms).
FMT = "%sa %sp %da %dp %pr %pkt %byt %nsa %nsp %nda %ndp %nevt %in %out %dir %ts %te %msec"
COLS = ("sa", "sp", "da", "dp", "pr", "pkt", "byt", "nsa", "nsp", "nda", "ndp", "nevt",
        "in", "out", "dir", "ts_date", "ts_time", "te_date", "te_time", "msec")
# What nfdump 1.7.1 does not decode (it prints 0.0 / 0.0.0.0 instead), by
# (protocol version, family, IP protocol or None for any): these columns are
# left out of the nfdump comparison and checked with tshark instead.
NFDUMP_BLIND = {
    # (v9 ICMPv6: nfdump reads not 139 but ICMP_TYPE (32), which nfflowd fills too)
    (10, 6, None): {"nsa", "nda"},  # postNAT{Source,Destination}IPv6Address from IPFIX
}
# The ICMP type/code of NAT events: nfflowd puts it in destinationTransportPort
# (the NetFlow convention); nfdump's v9 reader shows 0.0 for it, its IPFIX
# reader the type.code - not compared.
EVENT_ICMP_BLIND = {"dp"}
ADD, DELETE = "ADD", "DELETE"


def translated_entries(entries):
    return [e for e in entries if in_lab(e.orig["src"])]


# -- the run ------------------------------------------------------------------------
@dataclass
class RunResult:
    phase1: list                    # conntrack -L entries before the first flush
    phase2: list                    # ... before the second
    v9_old: Nfcapd                  # the v9 collector that was stopped mid-run
    v9_new: Nfcapd                  # its replacement, started with no template
    ipfix: Nfcapd
    pcap: Path
    capture: Capture
    t_start: float                  # wall clock before nfflowd started
    t_end: float                    # ... after it stopped
    t_restart: float                # the new v9 collector listens from here
    last_templates: float           # capture time of the last v9 templates before that
    log: str
    workdir: Path
    counters: dict                  # the daemon's, at exit
    timeline: dict                  # seconds since t_start of each step (diagnostics)
    ifs: dict                       # fw's interface indexes: fw-lan, fw-wan


def write_config(tmp: Path) -> Path:
    cfg = tmp / "nfflowd.yaml"
    cfg.write_text(f"""
export:
  flush_interval: 0.2
  observation_domain: {DOMAIN9}
  template_refresh_seconds: {REFRESH_S}
  collectors:
    - {{host: 127.0.0.1, port: {PORT9}, version: 9, nat_event_codes: legacy}}
    - {{host: 127.0.0.1, port: {PORT10}, version: 10, nat_event_codes: legacy,
        observation_domain: {DOMAIN10}}}
syslog:
  enabled: false
conntrack:
  poll_interval: 1
pidfile: {tmp}/nfflowd.pid
log:
  level: debug
""")
    return cfg


def tshark(pcap, *args, check=True) -> str:
    """tshark on ``pcap`` with both export ports decoded as cflow."""
    cmd = ["tshark", "-r", str(pcap), "-d", f"udp.port=={PORT9},cflow",
           "-d", f"udp.port=={PORT10},cflow", *map(str, args)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check:
        assert r.returncode == 0, r.stderr
    return r.stdout


def frames(pcap, port, fields, check=True) -> list[dict]:
    """One dict per datagram to ``port``: field -> list of values (a field
    occurring once per record gives one value per record, in order)."""
    args = ["-Y", f"udp.dstport=={port}", "-T", "fields", "-E", "separator=|",
            "-E", "aggregator=;", "-E", "occurrence=a"]
    for f in fields:
        args += ["-e", f]
    out = []
    for line in tshark(pcap, *args, check=check).splitlines():
        vals = line.split("|")
        if len(vals) != len(fields):
            continue                # a frame cut short while the capture runs
        out.append({f: [x for x in v.split(";") if x] for f, v in zip(fields, vals)})
    return out


def exported(pcap) -> tuple[int, dict]:
    """(datagrams read, {port: Counter of flow records, NAT creates and
    deletes}) captured so far - one tshark run for both ports."""
    out = {PORT9: Counter(), PORT10: Counter()}
    lines = tshark(pcap, "-T", "fields", "-E", "separator=|", "-E", "aggregator=;",
                   "-e", "udp.dstport", "-e", "cflow.octets", "-e", "cflow.nat_event",
                   check=False).splitlines()
    n = 0
    for line in lines:
        vals = line.split("|")
        if len(vals) != 3 or not vals[0].isdigit() or int(vals[0]) not in out:
            continue
        n += 1
        c = out[int(vals[0])]
        events = [x for x in vals[2].split(";") if x]
        c["flows"] += len([x for x in vals[1].split(";") if x])
        c["creates"] += events.count("1")
        c["deletes"] += events.count("2")
    return n, out


def wait_exported(capture, entries_so_far, timeout=15):
    """Until both ports got the flows and NAT deletes of ``entries_so_far``
    (every connection ended so far).  tshark runs only when the capture has
    grown since it last looked."""
    n = len(entries_so_far)
    want = {"flows": 2 * n, "deletes": n}
    state = {"read": -1, "got": None}

    def done():
        if capture.packets() == state["read"]:
            return False
        state["read"], state["got"] = exported(capture.path)
        return all(all(state["got"][p][k] >= v for k, v in want.items())
                   for p in (PORT9, PORT10))
    assert wait_for(done, timeout=timeout, interval=0.1), (
        f"export of {n} connections not captured within {timeout} s: {state['got']}")


def traffic_phase2(lab):
    lab.client("tcp", WAN4, 8080, 700)
    lab.client("udp", WAN6, 8080, 300, 2)
    lab.ping(WAN4, 2)


def settle_and_list(lab, kinds: Counter):
    """``conntrack -L`` once every connection made so far is in the table."""
    def entries():
        es = translated_entries(lab.conntrack_list())
        return es if Counter((e.family, e.proto) for e in es) == kinds else None
    es = wait_for(entries, timeout=5)
    assert es, (kinds, lab.conntrack_list())
    return es


def template_frames(pcap, port) -> list[float]:
    """Capture times of the datagrams to ``port`` that carry templates."""
    set_id = 0 if port == PORT9 else 2
    return [float(fr["frame.time_epoch"][0])
            for fr in frames(pcap, port, ["frame.time_epoch", "cflow.flowset_id"], check=False)
            if str(set_id) in fr["cflow.flowset_id"]]


@pytest.fixture(scope="module")
def run_result(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("v9ipfix")
    timeline = {}

    def mark(what):
        timeline[what] = round(time.time() - t_start, 2)

    with NatLab(f"{os.getpid()}v") as lab:      # not the v5 test's namespaces
        lab.start_servers(lifetime=90)
        v9_old = Nfcapd(lab, tmp / "v9-before", PORT9)
        ipfix = Nfcapd(lab, tmp, PORT10)
        assert wait_for(lambda: udp_listening(lab, lab.fw, PORT9)
                        and udp_listening(lab, lab.fw, PORT10), timeout=10)
        pcap = tmp / "export.pcapng"
        capture = Capture(lab, lab.fw, "lo", f"udp and (dst port {PORT9} or dst port {PORT10})",
                          pcap, duration=90)
        cfg = write_config(tmp)
        ifs = {dev: str(lab.ifindex(lab.fw, dev)) for dev in ("fw-lan", "fw-wan")}
        t_start = time.time()
        daemon, log = start_nfflowd(lab, cfg)
        try:
            mark("ready")
            # -- phase 1
            lab.mixed_traffic()
            phase1 = settle_and_list(lab, Counter({(4, 6): 1, (4, 17): 1, (4, 1): 1,
                                                   (6, 6): 1, (6, 17): 1, (6, 58): 1}))
            lab.flush()
            mark("flush1")
            wait_exported(capture, phase1)
            mark("exported1")
            # -- the v9 collector restarts: the new one has seen no template
            v9_old.stop()
            mark("v9_stopped")
            v9_new = Nfcapd(lab, tmp / "v9-after", PORT9)
            assert wait_for(lambda: udp_listening(lab, lab.fw, PORT9), timeout=10)
            t_restart = time.time()
            mark("v9_restarted")
            sent_templates = template_frames(pcap, PORT9)
            assert sent_templates, "no v9 templates captured in phase 1"
            last_templates = max(sent_templates)
            # -- phase 2: more connections, ended once the refresh interval
            # has passed since the templates were last sent (to the old one)
            traffic_phase2(lab)
            phase2 = settle_and_list(lab, Counter({(4, 6): 1, (6, 17): 1, (4, 1): 1}))
            mark("traffic2")
            time.sleep(max(0.0, last_templates + REFRESH_S + 0.3 - time.time()))
            lab.flush()
            mark("flush2")
            wait_exported(capture, phase1 + phase2)
            mark("exported2")
        finally:
            stop(daemon)
        daemon.log_reader.join(5)
        mark("stopped")
        t_end = time.time()
        log_text = "".join(log)
        assert daemon.returncode == 0, log_text
        stopped = [line for line in log if "event=stopped" in line]
        assert stopped, log_text
        counters = {k: int(v) for k, v in re.findall(r"(\S+)=(\d+)(?=\s|$)", stopped[-1])}
        # what the daemon sent has reached dumpcap before it is stopped
        sent = sum(counters.get(f"127.0.0.1:{p}/v{v}.datagrams", 0)
                   for p, v in ((PORT9, 9), (PORT10, 10)))
        wait_for(lambda: capture.packets() >= sent, timeout=5)
        capture.stop()
        v9_new.stop()
        ipfix.stop()
        mark("collectors_stopped")
        yield RunResult(phase1, phase2, v9_old, v9_new, ipfix, pcap, capture, t_start, t_end,
                        t_restart, last_templates, log_text, tmp, counters, timeline, ifs)


# -- nfdump ---------------------------------------------------------------------------
def dump(collector: Nfcapd) -> list[dict]:
    rows = []
    for line in collector.dump(FMT, "-6"):
        if line == "No matching flows":         # an empty file
            continue
        vals = line.split()
        assert len(vals) == len(COLS), line
        rows.append(dict(zip(COLS, vals)))
    return rows


def flow_rows(rows):
    return [r for r in rows if r["nevt"] not in (ADD, DELETE)]


def event_rows(rows):
    return [r for r in rows if r["nevt"] in (ADD, DELETE)]


def _tc(g):
    return f"{g['type']}.{g['code']}"


def expected_flows(entries, ifs):
    """Both directional records of every connection, as nfdump shows them:
    the original direction with the translated source (nsa/nsp) and the
    reply direction with the untranslated destination (nda/ndp); the
    original from fw-lan to fw-wan, the reply back (``ifs``: their
    indexes), both ingress."""
    out = []
    lan, wan = ifs["fw-lan"], ifs["fw-wan"]
    for e in entries:
        o, r, p = e.orig, e.reply, e.proto
        n = len(out)
        if p in (1, 58):    # no ports; the ICMP records carry no postNAPT ports either
            out.append(dict(sa=o["src"], sp="0", da=o["dst"], dp=_tc(o), pr=str(p),
                            pkt=str(o["packets"]), byt=str(o["bytes"]),
                            nsa=r["dst"], nsp="0", nda=r["src"], ndp="0"))
            out.append(dict(sa=r["src"], sp="0", da=r["dst"], dp=_tc(r), pr=str(p),
                            pkt=str(r["packets"]), byt=str(r["bytes"]),
                            nsa=r["src"], nsp="0", nda=o["src"], ndp="0"))
        else:
            out.append(dict(sa=o["src"], sp=str(o["sport"]), da=o["dst"], dp=str(o["dport"]),
                            pr=str(p), pkt=str(o["packets"]), byt=str(o["bytes"]),
                            nsa=r["dst"], nsp=str(r["dport"]), nda=r["src"],
                            ndp=str(r["sport"])))
            out.append(dict(sa=r["src"], sp=str(r["sport"]), da=r["dst"], dp=str(r["dport"]),
                            pr=str(p), pkt=str(r["packets"]), byt=str(r["bytes"]),
                            nsa=r["src"], nsp=str(r["sport"]), nda=o["src"],
                            ndp=str(o["sport"])))
        out[n].update({"in": lan, "out": wan, "dir": "I"})
        out[n + 1].update({"in": wan, "out": lan, "dir": "I"})
    return out


def expected_events(entries, kinds=(ADD, DELETE)):
    """A NAT event of each kind per translated connection: the original
    tuple, the translated source and the (untranslated) destination."""
    out = []
    for e in entries:
        o, r, p = e.orig, e.reply, e.proto
        icmp = p in (1, 58)
        for k in kinds:
            out.append(dict(sa=o["src"], sp="0" if icmp else str(o["sport"]), da=o["dst"],
                            dp=None if icmp else str(o["dport"]), pr=str(p),
                            # the ICMP query id and its translation (nfdump
                            # shows sp 0 for ICMP whatever was sent)
                            nsa=r["dst"], nsp=str(r["icmp_id"]) if icmp else str(r["dport"]),
                            nda=r["src"], nevt=k))
    return out


def _family(addr):
    return 6 if ":" in addr else 4


def comparable(rows, version, keys):
    """Rows as hashable tuples over ``keys``, minus what nfdump cannot show."""
    out = []
    for r in rows:
        blind = set()
        fam, pr = _family(r["sa"]), int(r["pr"])
        blind |= NFDUMP_BLIND.get((version, fam, pr), set())
        blind |= NFDUMP_BLIND.get((version, fam, None), set())
        if r.get("nevt") in (ADD, DELETE) and pr in (1, 58):
            blind |= EVENT_ICMP_BLIND
        out.append(tuple((k, None if k in blind else r.get(k)) for k in keys))
    return Counter(out)


FLOW_KEYS = ("sa", "sp", "da", "dp", "pr", "pkt", "byt", "nsa", "nsp", "nda", "ndp", "in", "out",
             "dir")
EVENT_KEYS = ("sa", "sp", "da", "dp", "pr", "nsa", "nsp", "nda", "nevt")


def assert_flows(rows, entries, version, ifs):
    got = comparable(flow_rows(rows), version, FLOW_KEYS)
    want = comparable(expected_flows(entries, ifs), version, FLOW_KEYS)
    assert got == want, f"missing: {want - got}\nunexpected: {got - want}"


def assert_events(rows, entries, version, kinds=(ADD, DELETE)):
    got = comparable([r for r in event_rows(rows) if r["nevt"] in kinds], version, EVENT_KEYS)
    want = comparable(expected_events(entries, kinds), version, EVENT_KEYS)
    assert got == want, f"missing: {want - got}\nunexpected: {got - want}"


# -- the tests --------------------------------------------------------------------------
def test_v9_records_match_conntrack(run_result):
    """The v9 collector that ran through phase 1: every connection's two
    directional flows with the translated source address and port and
    exactly the conntrack -L counts, and a NAT create and delete event each."""
    rows = dump(run_result.v9_old)
    assert_flows(rows, run_result.phase1, 9, run_result.ifs)
    assert_events(rows, run_result.phase1, 9)


def test_ipfix_records_match_conntrack(run_result):
    """The IPFIX collector ran throughout: both phases, flows and events."""
    rows = dump(run_result.ipfix)
    entries = run_result.phase1 + run_result.phase2
    assert_flows(rows, entries, 10, run_result.ifs)
    assert_events(rows, entries, 10)


def test_template_loss_recovered(run_result):
    """The v9 collector restarted mid-run had never seen a template; the
    connections ended after the refresh interval are decoded there: exactly
    the records of the datagrams from the first templates it got on (what
    came before them, without templates, it cannot decode)."""
    r = run_result
    rows = dump(r.v9_new)
    assert_flows(rows, r.phase2, 9, r.ifs)
    assert_events(rows, r.phase2, 9, kinds=(DELETE,))

    after = [f for f in frames(r.pcap, PORT9, ["frame.time_epoch", "cflow.flowset_id",
                                                "cflow.octets", "cflow.nat_event"])
             if float(f["frame.time_epoch"][0]) > r.t_restart]
    with_templates = [i for i, f in enumerate(after) if "0" in f["cflow.flowset_id"]]
    assert with_templates, "no templates were sent to the new collector"
    first = with_templates[0]

    def tally(fs):
        return Counter({"flows": sum(len(f["cflow.octets"]) for f in fs),
                        ADD: sum(f["cflow.nat_event"].count("1") for f in fs),
                        DELETE: sum(f["cflow.nat_event"].count("2") for f in fs)})
    got = Counter({"flows": len(flow_rows(rows)),
                   ADD: sum(row["nevt"] == ADD for row in rows),
                   DELETE: sum(row["nevt"] == DELETE for row in rows)})
    assert got == tally(after[first:]), (
        f"new collector decoded {got}; the datagrams from its first templates on carried "
        f"{tally(after[first:])}, those before {tally(after[:first])}")
    print(f"template recovery: {first} datagram(s) without templates reached the new "
          f"collector first ({dict(tally(after[:first]))} not decodable there), then templates "
          f"{float(after[first]['frame.time_epoch'][0]) - r.last_templates:.2f} s after the "
          f"previous ones (refresh {REFRESH_S} s); timeline {r.timeline}")


def _epoch(date: str, hms: str) -> float:
    """nfdump's local-time ``YYYY-mm-dd HH:MM:SS.mmm`` as epoch seconds."""
    whole, _, ms = hms.partition(".")
    return time.mktime(time.strptime(f"{date} {whole}", "%Y-%m-%d %H:%M:%S")) + int(ms) / 1000


@pytest.mark.parametrize("which", ["v9_old", "v9_new", "ipfix"])
def test_timestamps_absolute(run_result, which):
    """Flow start/end and NAT event times are wall-clock times within the
    run (not 1970, not uptime), start <= end, and a connection's NAT create
    lies between its flow's start and end, its delete at the end."""
    r = run_result
    lo, hi = r.t_start - 1, r.t_end + 1
    rows = dump(getattr(r, which))
    flows = flow_rows(rows)
    events = event_rows(rows)
    assert flows and events
    starts, ends = {}, {}
    for f in flows:
        ts, te = _epoch(f["ts_date"], f["ts_time"]), _epoch(f["te_date"], f["te_time"])
        assert lo <= ts <= te <= hi, (f, r.t_start, r.t_end)
        if f["pr"] in ("6", "17") and f["sa"] in (LAN4, LAN6):    # original direction
            starts[(f["sa"], f["sp"], f["pr"])] = ts
            ends[(f["sa"], f["sp"], f["pr"])] = te
    for e in events:
        t = int(e["msec"]) / 1000
        assert lo <= t <= hi, (e, r.t_start, r.t_end)
        # the event time is the record's first and last too (#15 item 18)
        for d, hms in ((e["ts_date"], e["ts_time"]), (e["te_date"], e["te_time"])):
            assert abs(_epoch(d, hms) - t) < 0.0005, e
        key = (e["sa"], e["sp"], e["pr"])
        if key in starts:
            if e["nevt"] == ADD:
                assert starts[key] - 0.002 <= t <= ends[key], (e, starts[key], ends[key])
            else:
                assert abs(t - ends[key]) < 1.0, (e, ends[key])
    assert starts, "no TCP/UDP connection to compare event times with"


def test_header_times(run_result):
    """The v9 header's unix_secs and the IPFIX export time are wall-clock
    times of the run; v9 sysUptime is this machine's uptime (unix_secs -
    sysUptime is the boot time)."""
    r = run_result
    boot = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    v9 = frames(r.pcap, PORT9, ["cflow.unix_secs", "cflow.sysuptime"])
    v10 = frames(r.pcap, PORT10, ["cflow.exporttime"])
    assert v9 and v10
    for f in v9:
        secs, up = int(f["cflow.unix_secs"][0]), float(f["cflow.sysuptime"][0])
        assert int(r.t_start) <= secs <= r.t_end, (f, r.t_start, r.t_end)
        assert abs(secs - up - boot) < 2, (f, boot)
    for f in v10:
        t = int(f["cflow.exporttime"][0])
        assert int(r.t_start) <= t <= r.t_end, (f, r.t_start, r.t_end)


def test_capture_complete_and_clean(run_result):
    """Every datagram the daemon sent is in the capture, dissected by tshark's
    cflow dissector as v9 / IPFIX with no malformed packet and no expert
    item above 'chat' (its sequence analysis included); v9 sequence numbers
    count datagrams and the header count all records, IPFIX sequence
    numbers count data records and the length is the datagram's."""
    r = run_result
    assert r.capture.dropped == 0, "".join(r.capture.log)
    c = r.counters
    v9 = frames(r.pcap, PORT9, ["cflow.version", "cflow.sequence", "cflow.count",
                                "cflow.octets", "cflow.nat_event", "cflow.template_id",
                                *OPTIONS_FIELDS])
    v10 = frames(r.pcap, PORT10, ["cflow.version", "cflow.sequence", "cflow.len", "udp.length",
                                  "cflow.octets", "cflow.nat_event", *OPTIONS_FIELDS])
    assert len(v9) == c[f"127.0.0.1:{PORT9}/v9.datagrams"] > 0, (len(v9), c)
    assert len(v10) == c[f"127.0.0.1:{PORT10}/v10.datagrams"] > 0, (len(v10), c)
    assert c[f"127.0.0.1:{PORT9}/v9.send_errors"] == c[f"127.0.0.1:{PORT10}/v10.send_errors"] == 0
    total = len(tshark(r.pcap, "-T", "fields", "-e", "frame.number").split())
    assert total == len(v9) + len(v10)
    assert all(f["cflow.version"] == ["9"] for f in v9)
    assert all(f["cflow.version"] == ["10"] for f in v10)
    assert [int(f["cflow.sequence"][0]) for f in v9] == list(range(len(v9)))
    # v9 count: template records and data records (RFC 3954 section 5.1),
    # the options' included
    assert [int(f["cflow.count"][0]) for f in v9] == [
        len(f["cflow.octets"]) + len(f["cflow.nat_event"]) + len(f["cflow.template_id"])
        + options_records(f) for f in v9]
    assert sum(map(options_records, v9)) and sum(map(options_records, v10))
    assert sum(len(f["cflow.octets"]) + len(f["cflow.nat_event"]) for f in v9) == \
        c[f"127.0.0.1:{PORT9}/v9.records"]
    records = [len(f["cflow.octets"]) + len(f["cflow.nat_event"]) for f in v10]
    # the IPFIX sequence counts every data record, options records too
    with_options = [n + options_records(f) for n, f in zip(records, v10)]
    assert [int(f["cflow.sequence"][0]) for f in v10] == [sum(with_options[:i])
                                                          for i in range(len(v10))]
    assert all(int(f["cflow.len"][0]) == int(f["udp.length"][0]) - 8 for f in v10)
    assert sum(records) == c[f"127.0.0.1:{PORT10}/v10.records"]

    out = tshark(r.pcap, "-Y", "_ws.malformed || _ws.expert", "-T", "fields",
                 "-E", "separator=|", "-e", "frame.number", "-e", "_ws.malformed",
                 "-e", "_ws.expert.severity", "-e", "_ws.expert.message")
    bad = []
    for line in out.splitlines():
        frame, malformed, severities, messages = (line.split("|") + ["", "", ""])[:4]
        sev = [int(x, 0) for x in severities.split(",") if x.strip()]
        if malformed or any(x > 0x00200000 for x in sev):       # above PI_CHAT
            bad.append(line)
        elif line.strip():
            print(f"tshark chat in frame {frame}: {messages}")
    assert not bad, "\n".join(bad)


def _norm6(a):
    return str(ipaddress.ip_address(a))


def test_ipfix_ipv6_translation_in_tshark(run_result):
    """nfdump 1.7.1 does not read postNATSourceIPv6Address (281) from IPFIX:
    tshark shows the translated IPv6 source of every IPv6 flow and NAT event
    there (and the post-NAT destination)."""
    r = run_result
    fields = ["cflow.srcaddrv6", "cflow.dstaddrv6", "cflow.post_nat_source_ipv6_address",
              "cflow.post_nat_destination_ipv6_address"]
    got = Counter()
    for f in frames(r.pcap, PORT10, fields):
        cols = [f[k] for k in fields]
        assert len({len(c) for c in cols}) == 1, f     # every IPv6 record has all four
        got.update(tuple(map(_norm6, rec)) for rec in zip(*cols))
    want = Counter()
    for e in r.phase1 + r.phase2:
        if e.family != 6:
            continue
        o, rep = e.orig, e.reply
        fwd = tuple(map(_norm6, (o["src"], o["dst"], rep["dst"], rep["src"])))
        want[fwd] += 3                  # the original flow, NAT create and delete
        want[tuple(map(_norm6, (rep["src"], rep["dst"], rep["src"], o["src"])))] += 1
    assert got == want
    assert any(k[2] == _norm6("2001:db8:2::1") for k in got)     # translated to fw's address


def test_v9_icmpv6_type_in_tshark(run_result):
    """icmpTypeCodeIPv6 (139), which nfdump 1.7.1 does not read from v9 (it
    reads ICMP_TYPE, 32: see assert_flows): tshark shows echo request and
    reply types of the IPv6 ping's two flows there."""
    r = run_result
    got = Counter()
    for f in frames(r.pcap, PORT9, ["cflow.icmp_ipv6_type", "cflow.icmp_ipv6_code"]):
        got.update(zip(f["cflow.icmp_ipv6_type"], f["cflow.icmp_ipv6_code"]))
    want = Counter()
    for e in r.phase1 + r.phase2:
        if e.proto == 58:
            want[(str(e.orig["type"]), str(e.orig["code"]))] += 1
            want[(str(e.reply["type"]), str(e.reply["code"]))] += 1
    assert want and got == want


@pytest.mark.skipif(shutil.which("ipfixDump") is None,
                    reason="needs ipfixDump (Debian: libfixbuf-tools)")
def test_ipfix_stream_reads_in_ipfixdump(run_result, tmp_path):
    """The IPFIX messages as sent, one after the other in a file, are read by
    libfixbuf without error or warning (sequence numbers included)."""
    r = run_result
    got = frames(r.pcap, PORT10, ["udp.payload", *OPTIONS_FIELDS])
    msgs = [bytes.fromhex(f["udp.payload"][0]) for f in got]
    stream = tmp_path / "ipfix.stream"
    stream.write_bytes(b"".join(msgs))
    res = run("ipfixDump", "--in", stream, check=False, timeout=60)
    text = res.stdout + res.stderr
    assert res.returncode == 0, text
    for word in ("error", "warning", "out of sequence", "missing template", "illegal"):
        assert word not in text.lower(), text
    records = r.counters[f"127.0.0.1:{PORT10}/v10.records"] + sum(map(options_records, got))
    assert f"{len(msgs)} Messages, {records} Data Records" in text, text
    domains = re.findall(r"observation domain id: (\d+)", text)
    assert domains == [str(DOMAIN10)] * len(msgs), domains
    # an independent reader of postNATSourceIPv6Address from IPFIX
    flat = " ".join(text.split())
    assert "postNATSourceIPv6Address : 2001:0db8:0002::0001" in flat, flat[-3000:]


def test_observation_domains(run_result):
    """The v9 source id is export.observation_domain, the IPFIX observation
    domain the collector's own observation_domain: as tshark reads them."""
    r = run_result
    ids9 = [v for f in frames(r.pcap, PORT9, ["cflow.source_id"]) for v in f["cflow.source_id"]]
    ids10 = [v for f in frames(r.pcap, PORT10, ["cflow.od_id"]) for v in f["cflow.od_id"]]
    assert ids9 and set(ids9) == {str(DOMAIN9)}
    assert ids10 and set(ids10) == {str(DOMAIN10)}

