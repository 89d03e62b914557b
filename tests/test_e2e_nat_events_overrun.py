"""NAT session events across a netlink overrun, on a real NAT (#15 item 6).

nfflowd runs in fw with a 64 KiB netlink receive buffer, exporting IPFIX
flows and RFC 8158 NAT events to tests/ipfix_sink.py.  UDP "connections"
are made from lan to wan (tests/burst.py) while nfflowd is stopped
(SIGSTOP: a daemon that cannot keep up, for certain): the kernel overruns
its receive buffer and drops most of their NEW events.  Once it runs again
the resync finds them in the table; then the table is flushed.  Every
connection must get exactly one create and one delete event.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from collections import Counter

import pytest

from natlab import LAN4, NatLab, skip_reason, stop, wait_for
from test_e2e_burst import SINK, burst, count_table, final_counters, records
from test_e2e_nat import start_nfflowd
from test_e2e_syslog import check_counters, scrape

_reason = skip_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_reason is not None, reason=_reason or "")]

N = 10000
PORT = 24750
NAT44_CREATE, NAT44_DELETE = 4, 5


@pytest.fixture
def lab():
    with NatLab() as lab:
        lab.ns(lab.fw, "sysctl", "-qw", "net.netfilter.nf_conntrack_udp_timeout=600")
        yield lab


def nat_lines(path) -> list[tuple]:
    """(event, proto, src, sport, post_src, post_sport, time_ms) per NAT event."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        f = line.split()
        if len(f) == 7:
            out.append((int(f[0]), int(f[1]), f[2], int(f[3]), f[4], int(f[5]), int(f[6])))
    return out


def test_connections_whose_new_event_was_lost_get_their_create_event(lab, tmp_path):
    cfg = tmp_path / "nfflowd.yaml"
    cfg.write_text(f"""
export:
  collectors:
    - {{host: 127.0.0.1, port: {PORT}, version: 10, records: [flows, nat_events]}}
syslog: {{enabled: false}}
conntrack: {{rcvbuf: 65536, poll_interval: 1}}
pidfile: {tmp_path}/nfflowd.pid
metrics: {{listen: 127.0.0.1:9469}}
""")
    out, nat_out = tmp_path / "records.txt", tmp_path / "nat.txt"
    sink = lab.spawn(lab.fw, sys.executable, SINK, "127.0.0.1", PORT, out, "--lifetime", 120,
                     "--nat", nat_out)
    assert "READY" in sink.stdout.readline()
    daemon, log = start_nfflowd(lab, cfg)
    try:
        os.kill(daemon.pid, signal.SIGSTOP)
        try:
            sent = burst(lab, N)
            assert wait_for(lambda: count_table(lab) >= sent, timeout=20)
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        assert sent == N and count_table(lab) == N
        # the overrun is noticed at the next receive, the resync follows
        assert wait_for(lambda: any("event=resynced" in x for x in log), timeout=20), \
            "".join(log)[-3000:]
        lab.flush()
        wait_for(lambda: len(records(out)) >= 2 * N
                 and len(nat_lines(nat_out)) >= 2 * N, timeout=40)
        time.sleep(0.5)
        shown = check_counters(lab, cfg)            # what `check` shows
        metric = scrape(lab, 9469)
    finally:
        os.kill(daemon.pid, signal.SIGCONT)
        counters, text = final_counters(daemon, log)
        stop(sink)
    print({k: counters[k] for k in ("overruns", "resyncs", "adopted_by_resync",
                                    "nat_creates_late", "exported_by_resync") if k in counters})
    events = [e for e in nat_lines(nat_out) if e[2] == LAN4]
    per_conn = Counter((e[3], e[0]) for e in events)
    creates = sum(1 for e in events if e[0] == NAT44_CREATE)
    deletes = sum(1 for e in events if e[0] == NAT44_DELETE)
    # the NEW events really overflowed: most connections were adopted
    assert int(counters["overruns"]) >= 1, counters
    assert int(counters["adopted_by_resync"]) >= 1, counters
    # every connection: one create, one delete
    assert (creates, deletes) == (N, N), (creates, deletes, counters)
    assert {sport for sport, _ev in per_conn} == set(range(10000, 10000 + N))
    assert set(per_conn.values()) == {1}
    # the create no later than the delete, for the same translation
    first = {}
    for ev, _p, _s, sport, post, psport, t in events:
        if ev == NAT44_CREATE:
            first[sport] = (post, psport, t)
    for ev, _p, _s, sport, post, psport, t in events:
        if ev == NAT44_DELETE:
            assert first[sport][:2] == (post, psport) and first[sport][2] <= t
    # the late creates are counted, in `check` and the metrics too
    late = int(counters["nat_creates_late"])
    assert late == int(counters["adopted_by_resync"]), counters
    assert int(shown["nat_creates_late"]) == late and metric["nfflowd_nat_creates_late"] == late
    flows = [r for r in records(out) if r[2] == LAN4]
    assert len({r[3] for r in flows}) == N and len(flows) == N
    assert all(e[4] != LAN4 for e in events)         # translated (to fw's address)
