"""The NAT trace archive: rows, merging, the store (hot and sealed tiers,
damage, kill -9), trace's answers and exit statuses, and the CSV import."""

from __future__ import annotations

import gzip
import io
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from nfflowd import flowtools
from nfflowd.app.trace import TraceQuery, import_files, trace
from nfflowd.archive import (HOUR_MS, KIND_FINAL, KIND_OPEN, QueryError, RowBuilder, addr16,
                             make_pkey, merge, parse_target, parse_time, parse_window, row_dict)
from nfflowd.flowtools_import import CsvPairer
from nfflowd.io.archive import ArchiveError, ArchiveWriter, Reader, Store
from nfflowd.record import (END_ACTIVE_TIMEOUT, END_OF_FLOW, ORIGINAL, REPLY, Flow, FlowBatch,
                            NatEvent)

T0 = 1_780_000_000_000 // HOUR_MS * HOUR_MS + 600_000      # 10 minutes into an hour


def v4(s):
    return socket.inet_pton(socket.AF_INET, s)


def v6(s):
    return socket.inet_pton(socket.AF_INET6, s)


PRIV, PUB, REM = v4("198.51.100.2"), v4("203.0.113.1"), v4("203.0.113.2")


def conn(cid, sport, xsport, start, end, proto=6, reason=END_OF_FLOW, priv=PRIV, pub=PUB,
         rem=REM, dport=80, zone=0, mark=0):
    """The NAT create event and the two DESTROY records of one SNAT connection
    (in conntrack ``zone``, with ct ``mark``)."""
    fam = 4 if len(priv) == 4 else 6
    ev = NatEvent(fam, proto, priv, rem, sport, dport, pub, rem, xsport, dport, start, True, cid)
    o = Flow(fam, proto, priv, rem, sport, dport, pub, rem, xsport, dport, 3, 300, start, end,
             ORIGINAL, reason, 0, 0, cid, 0, zone=zone, mark=mark)
    r = Flow(fam, proto, rem, pub, dport, xsport, rem, priv, dport, sport, 2, 2000, start, end,
             REPLY, reason, 0, 0, cid, 0, zone=zone, mark=mark)
    return ev, [o, r]


class EventLog:
    """A structlog-style logger that keeps the events' names."""

    def __init__(self):
        self.events = []

    def warning(self, event, **kw):
        self.events.append(event)

    info = warning


def key(port, pub=PUB):
    return make_pkey(addr16(pub), port)


# ---- rows and merging ---------------------------------------------------------

def test_open_then_final_merge_to_one_ended_row():
    b = RowBuilder("fw1")
    ev, flows = conn(7, 33000, 40000, T0, T0 + 5000)
    rows = np.concatenate([b.rows([], [ev]), b.rows(flows, [])])
    assert list(rows["kind"]) == [KIND_OPEN, KIND_FINAL]
    m = merge(rows)
    assert len(m) == 1 and m[0]["kind"] == KIND_FINAL
    assert (m[0]["end_ms"], m[0]["pkts_out"], m[0]["bytes_in"]) == (T0 + 5000, 3, 2000)
    assert m[0]["pkey"] == key(40000)


def test_icmp_final_row_keeps_the_translated_query_id():
    b = RowBuilder("fw1")
    ev = NatEvent(4, 1, PRIV, REM, 17, 8 * 256, PUB, REM, 4242, 8 * 256, T0, True, 9)
    o = Flow(4, 1, PRIV, REM, 0, 2048, PUB, REM, 0, 2048, 1, 84, T0, T0 + 1, ORIGINAL,
             END_OF_FLOW, 0, 0, 9, 0)
    r = Flow(4, 1, REM, PUB, 0, 0, REM, PRIV, 0, 0, 1, 84, T0, T0 + 1, REPLY, END_OF_FLOW,
             0, 0, 9, 0)
    m = merge(np.concatenate([b.rows([], [ev]), b.rows([o, r], [])]))
    assert len(m) == 1 and m[0]["xsport"] == 4242 and m[0]["sport"] == 17


def test_active_timeout_updates_add_up_and_stay_open_until_final():
    b = RowBuilder("fw1")
    ev, _ = conn(5, 1000, 2000, T0, 0)
    _, upd = conn(5, 1000, 2000, T0, T0 + 60_000, reason=END_ACTIVE_TIMEOUT)
    _, fin = conn(5, 1000, 2000, T0 + 60_000, T0 + 90_000)
    rows = np.concatenate([b.rows([], [ev]), b.rows(upd, [])])
    m = merge(rows)
    assert len(m) == 1 and m[0]["kind"] == KIND_OPEN and m[0]["pkts_out"] == 3
    m = merge(np.concatenate([rows, b.rows(fin, [])]))
    assert len(m) == 1 and m[0]["kind"] == KIND_FINAL
    assert (m[0]["start_ms"], m[0]["end_ms"], m[0]["pkts_out"]) == (T0, T0 + 90_000, 6)


@pytest.mark.parametrize("columns", [False, True], ids=["tuples", "columns"])
def test_zone_and_mark_come_from_the_records(columns):
    """A FINAL or UPDATE row carries the records' conntrack zone and mark
    (32 bits); the OPEN row, made from a NAT event, has neither, and the
    merged row takes them from the latest row that has them: the mark at
    the connection's end, after an active timeout under another mark."""
    b = RowBuilder("fw1")

    def rows(flows):
        return b.rows(FlowBatch.from_flows(flows).as_columns() if columns else flows, [])
    ev, _ = conn(5, 1000, 2000, T0, 0, zone=7)
    _, upd = conn(5, 1000, 2000, T0, T0 + 60_000, reason=END_ACTIVE_TIMEOUT, zone=7, mark=1)
    _, fin = conn(5, 1000, 2000, T0 + 60_000, T0 + 90_000, zone=7, mark=0xFFFFFFFF)
    opened = b.rows([], [ev])
    assert (opened[0]["zone"], opened[0]["mark"]) == (0, 0)
    updated = np.concatenate([opened, rows(upd)])
    assert (updated[1]["zone"], updated[1]["mark"]) == (7, 1)
    m = merge(updated)
    assert len(m) == 1 and (m[0]["kind"], m[0]["zone"], m[0]["mark"]) == (KIND_OPEN, 7, 1)
    m = merge(np.concatenate([updated, rows(fin)]))
    assert len(m) == 1 and m[0]["kind"] == KIND_FINAL
    assert (m[0]["zone"], m[0]["mark"]) == (7, 0xFFFFFFFF)
    # without an update: the FINAL row absorbs the OPEN one
    ev, fin = conn(6, 1001, 2001, T0, T0 + 1000, zone=65535, mark=0x10)
    m = merge(np.concatenate([b.rows([], [ev]), rows(fin)]))
    assert len(m) == 1 and (m[0]["zone"], m[0]["mark"]) == (65535, 0x10)
    assert row_dict(m[0])["zone"] == 65535 and row_dict(m[0])["mark"] == 0x10


def test_a_lone_direction_is_counted_unpaired():
    b = RowBuilder("fw1")
    _, flows = conn(3, 1, 2, T0, T0 + 1)
    assert len(b.rows(flows[:1], [])) == 0 and b.unpaired == 1


@pytest.mark.parametrize("text,ms", [
    ("1780000000", 1_780_000_000_000), ("1780000000.5", 1_780_000_000_500),
    ("2026-12-04T10:00:03Z", 1796378403000), ("2026-12-04 11:00:03+01:00", 1796378403000),
])
def test_parse_time(text, ms):
    assert parse_time(text) == ms


def test_parse_time_without_zone_is_local():
    import datetime as dt
    tz = dt.timezone(dt.timedelta(hours=2))
    assert parse_time("2026-12-04 12:00:03", tz) == 1796378403000


@pytest.mark.parametrize("bad", ["yesterday", "2026-13-01", "", "12:00:03 tomorrow"])
def test_parse_time_refuses(bad):
    with pytest.raises(QueryError):
        parse_time(bad)


def test_parse_target_and_window():
    assert parse_target("203.0.113.1:40000") == (addr16(PUB), 40000)
    assert parse_target("[2001:db8::1]:53") == (addr16(v6("2001:db8::1")), 53)
    for bad in ("203.0.113.1", "203.0.113.1:70000", "2001:db8::1:53", "host:80"):
        with pytest.raises(QueryError):
            parse_target(bad)
    assert parse_window("2s") == 2000 and parse_window("500ms") == 500
    assert parse_window("1m") == 60_000 and parse_window("3") == 3000
    with pytest.raises(QueryError):
        parse_window("soon")


# ---- the store ------------------------------------------------------------------

def write(store, b, flows=(), events=()):
    store.append(b.rows(list(flows), list(events)))
    store.flush()


def test_found_open_then_ended_in_hot_and_sealed_tiers(tmp_path):
    s = Store(tmp_path)
    s.open()
    b = RowBuilder("fw1")
    ev, flows = conn(7, 33000, 40000, T0, T0 + 5000, zone=3, mark=0xCAFE)
    write(s, b, events=[ev])
    r = Reader(tmp_path)
    got = r.lookup(key(40000), T0 + 1000, 2000)
    assert len(got) == 1 and got[0]["kind"] == KIND_OPEN
    write(s, b, flows=flows)
    for sealed in (False, True):
        if sealed:
            assert s.seal_due(T0 + 3 * HOUR_MS) == 1
            assert not list((tmp_path / "hot").glob("*.arrows"))
        got = r.lookup(key(40000), T0 + 1000, 2000)
        assert len(got) == 1 and got[0]["kind"] == KIND_FINAL and got[0]["end_ms"] == T0 + 5000
        assert (got[0]["zone"], got[0]["mark"]) == (3, 0xCAFE)
        # (sealed files leave out a translated destination equal to the original)
        assert (got[0]["xdst"], got[0]["xdport"]) == (addr16(REM), 80)
        assert len(r.lookup(key(40000), T0 + 8000, 2000)) == 0        # after it
        assert len(r.lookup(key(40000), T0 - 3000, 2000)) == 0        # before it
        assert len(r.lookup(key(40000), T0 + 6900, 2000)) == 1        # within the window
        assert len(r.lookup(key(40001), T0 + 1000, 2000)) == 0


def test_long_and_open_connections_across_seals(tmp_path):
    s = Store(tmp_path)
    s.open()
    b = RowBuilder("fw1")
    ev_long, fl_long = conn(1, 1000, 50000, T0, T0 + 5 * HOUR_MS)
    ev_open, _ = conn(2, 1001, 50001, T0, 0)
    write(s, b, events=[ev_long, ev_open])
    s.seal_due(T0 + 3 * HOUR_MS)
    r = Reader(tmp_path)
    assert r.lookup(key(50000), T0 + 2 * HOUR_MS, 0)[0]["kind"] == KIND_OPEN
    write(s, b, flows=fl_long)
    s.seal_due(T0 + 9 * HOUR_MS)
    got = r.lookup(key(50000), T0 + 2 * HOUR_MS, 0)
    assert len(got) == 1 and got[0]["end_ms"] == T0 + 5 * HOUR_MS
    assert len(r.lookup(key(50000), T0 + 6 * HOUR_MS, 0)) == 0       # ended by then
    # the one never ended stays open, whenever asked after its start
    for t in (T0 + HOUR_MS, T0 + 8 * HOUR_MS):
        got = r.lookup(key(50001), t, 0)
        assert len(got) == 1 and got[0]["kind"] == KIND_OPEN


def test_retention_drops_whole_days(tmp_path):
    s = Store(tmp_path, retention_days=1)
    s.open()
    b = RowBuilder("fw1")
    _, flows = conn(1, 1000, 50000, T0, T0 + 1000)
    write(s, b, flows=flows)
    s.seal_due(T0 + 3 * HOUR_MS)
    assert len(Reader(tmp_path).lookup(key(50000), T0, 0)) == 1
    assert s.purge(T0 + 3 * 24 * HOUR_MS) == 1
    assert len(Reader(tmp_path).lookup(key(50000), T0, 0)) == 0


def test_damaged_sealed_file_is_skipped_and_the_others_answer(tmp_path):
    s = Store(tmp_path)
    s.open()
    b = RowBuilder("fw1")
    _, f1 = conn(1, 1000, 50000, T0, T0 + 1000)
    _, f2 = conn(2, 1000, 50000, T0 + HOUR_MS, T0 + HOUR_MS + 1000)
    write(s, b, flows=f1 + f2)
    s.seal_due(T0 + 4 * HOUR_MS)
    files = sorted(tmp_path.glob("*/??.parquet"))
    assert len(files) == 2
    files[0].write_bytes(b"PAR1" + b"\x00" * 100 + b"PAR1")
    warnings = []
    r = Reader(tmp_path, log=warnings.append)
    assert len(r.lookup(key(50000), T0, 0)) == 0
    assert len(r.lookup(key(50000), T0 + HOUR_MS, 0)) == 1
    assert r.damaged == [str(files[0])] and "damaged" in warnings[0]
    # the writer's next seal of that hour moves it aside and counts it
    write(s, b, flows=conn(3, 1, 2, T0, T0 + 10)[1])
    s.seal_due(T0 + 5 * HOUR_MS)
    assert s.counters["archive_damaged"] == 1
    assert files[0].with_name(files[0].name + ".damaged").exists()


def test_torn_hot_file_keeps_what_was_flushed(tmp_path):
    s = Store(tmp_path)
    s.open()
    b = RowBuilder("fw1")
    write(s, b, flows=conn(1, 1000, 50000, T0, T0 + 1000)[1])
    hot = next((tmp_path / "hot").glob("*.arrows"))
    size = hot.stat().st_size
    write(s, b, flows=conn(2, 1000, 50001, T0, T0 + 1000)[1])
    with open(hot, "r+b") as f:
        f.truncate(size + (hot.stat().st_size - size) // 2)
    r = Reader(tmp_path)
    assert len(r.lookup(key(50000), T0, 0)) == 1
    assert len(r.lookup(key(50001), T0, 0)) == 0


def test_reader_refuses_what_is_not_an_archive(tmp_path):
    with pytest.raises(ArchiveError, match="no archive"):
        Reader(tmp_path / "nope")
    with pytest.raises(ArchiveError, match="not an nfflowd archive"):
        Reader(tmp_path)


def test_seal_cut_short_is_finished_at_the_next_open(tmp_path):
    s = Store(tmp_path)
    s.open()
    b = RowBuilder("fw1")
    write(s, b, flows=conn(1, 1000, 50000, T0, T0 + 1000)[1])
    s.close()
    # a journal whose renames were not done: the next open does them
    hot = next((tmp_path / "hot").glob("*.arrows"))
    tmp = tmp_path / "extra.parquet.tmp"
    tmp.write_bytes(b"x")
    (tmp_path / "seal.journal").write_text(json.dumps(
        {"renames": [[str(tmp), str(tmp_path / "extra.parquet")]], "deletes": [str(hot)]}))
    Store(tmp_path).open()
    assert (tmp_path / "extra.parquet").exists() and not hot.exists()
    assert not (tmp_path / "seal.journal").exists()


WRITER = textwrap.dedent("""
    import sys, time, socket
    sys.path.insert(0, {root!r})
    from tests.test_archive import conn
    from nfflowd.io.archive import ArchiveWriter
    w = ArchiveWriter({path!r}, "fw1", flush_interval=0.05, clock=lambda: {t0} / 1000)
    w.open()
    i = 0
    while True:
        ev, flows = conn(i + 1, 1000 + i % 60000, 10000 + i, {t0} + i, {t0} + i + 500)
        w.put(flows, [ev])
        i += 1
        if i == 200:
            time.sleep(0.5)            # flushed by now
            print("flushed", i, flush=True)
        elif i > 200:
            time.sleep(0.0005)
""")


def test_kill_9_keeps_everything_up_to_the_last_flush(tmp_path):
    root = str(Path(__file__).resolve().parents[1])
    code = WRITER.format(root=root, path=str(tmp_path / "a"), t0=T0)
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().split() == ["flushed", "200"]
        time.sleep(0.3)
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait(10)
    r = Reader(tmp_path / "a")
    for i in range(200):
        got = r.lookup(key(10000 + i), T0 + i + 100, 0)
        assert len(got) == 1 and got[0]["kind"] == KIND_FINAL, i
    # and a writer opens it again, seals it and it still answers
    s = Store(tmp_path / "a")
    s.open()
    s.seal_due(T0 + 5 * HOUR_MS)
    assert len(Reader(tmp_path / "a").lookup(key(10123), T0 + 223, 0)) == 1


def test_writer_thread_counts_what_does_not_fit(tmp_path):
    w = ArchiveWriter(tmp_path, "fw1", flush_interval=0.05, queue_max=1,
                      clock=lambda: T0 / 1000)
    w.log = log = EventLog()
    w.store.open()              # not started: the queue fills
    ev, flows = conn(1, 1, 2, T0, T0 + 1)
    assert w.put(flows, [ev])
    assert not w.put(flows, [ev]) and not w.put(flows, [ev])
    assert w.stats()["archive_dropped"] == 4 and log.events == ["archive_behind"]


# ---- trace ---------------------------------------------------------------------

def archive_with(tmp_path, *conns):
    s = Store(tmp_path / "arch")
    s.open()
    b = RowBuilder("fw1")
    for ev, flows in conns:
        write(s, b, flows=flows, events=[ev] if ev else [])
    s.close()
    return str(tmp_path / "arch")


def run_trace(path, target, at, **kw):
    out, err = io.StringIO(), io.StringIO()
    status = trace(path, TraceQuery(target, at, **kw), out=out, errout=err)
    return status, out.getvalue(), err.getvalue()


def test_trace_formats_and_statuses(tmp_path):
    ev, flows = conn(7, 33000, 40000, T0, T0 + 5000)
    path = archive_with(tmp_path, (ev, flows))
    at = str((T0 + 1000) / 1000)
    status, out, err = run_trace(path, "203.0.113.1:40000", at, fmt="json")
    assert status == 0, err
    rows = json.loads(out)
    assert len(rows) == 1 and rows[0]["src"] == "198.51.100.2" and rows[0]["sport"] == 33000
    assert rows[0]["state"] == "destroy" and rows[0]["end"].endswith("+00:00")
    status, out, _ = run_trace(path, "203.0.113.1:40000", at, fmt="csv")
    assert status == 0 and out.splitlines()[0].startswith("start,end,state,proto,src")
    status, out, _ = run_trace(path, "203.0.113.1:40000", at)
    assert status == 0 and "198.51.100.2:33000" in out and "203.0.113.1:40000" in out
    assert run_trace(path, "203.0.113.1:40000", at, proto="udp")[0] == 1
    status, out, err = run_trace(path, "203.0.113.1:40000", str(T0 / 1000 + 3600))
    assert status == 1 and "no connection" in err
    audit = [json.loads(x) for x in open(os.path.join(path, "audit.log"))]
    assert [a["rows"] for a in audit] == [1, 1, 1, 0, 0]
    assert audit[0]["query"]["target"] == "203.0.113.1:40000" and audit[0]["who"]


@pytest.mark.parametrize("target,at,why", [
    ("203.0.113.1", "1780000000", "not an address and port"),
    ("203.0.113.1:80", "noon", "not a time"),
    ("203.0.113.1:80", "1780000000", "no archive"),
])
def test_trace_bad_queries_exit_2_with_the_reason(tmp_path, target, at, why):
    status, out, err = run_trace(str(tmp_path / "none"), target, at)
    assert status == 2 and why in err and "Traceback" not in err and out == ""


def test_trace_refuses_when_the_audit_log_cannot_be_written(tmp_path):
    ev, flows = conn(7, 33000, 40000, T0, T0 + 5000)
    path = archive_with(tmp_path, (ev, flows))
    out, err = io.StringIO(), io.StringIO()
    status = trace(path, TraceQuery("203.0.113.1:40000", str(T0 / 1000)),
                   audit_log=str(tmp_path / "no" / "dir" / "audit.log"), out=out, errout=err)
    assert status == 2 and "audit log" in err.getvalue() and out.getvalue() == ""


# ---- import ----------------------------------------------------------------------

def csv_text(flow_pairs, now_ms, prefix=""):
    flows = [f for pair in flow_pairs for f in pair]
    batch = flowtools.expand(FlowBatch.from_flows(flows), now_ms * 1_000_000, now_ms - 3_600_000,
                             "192.0.2.9")
    return "".join(f"{prefix}{line}\n" for line in flowtools.csv_lines(batch))


def test_import_pairs_mirror_lines_into_connections(tmp_path):
    snat = conn(7, 33000, 40000, T0, T0 + 5000)[1]
    plain = conn(8, 5000, 5000, T0, T0 + 5000, pub=PRIV)[1]        # not translated
    six = conn(9, 1234, 61000, T0, T0 + 5000, priv=v6("2001:db8:1::2"),
               pub=v6("2001:db8:2::1"), rem=v6("2001:db8:2::2"))[1]
    text = csv_text([snat, plain, six], T0 + 6000,
                    prefix="2026-05-28T20:10:06.000000+00:00 fw9 nfflowd: ")
    # a record that fits no connection, and a line that is not CSV
    text += csv_text([snat[:1]], T0 + 7000) + "garbage\n"
    (tmp_path / "flows.log.1.gz").write_bytes(gzip.compress(text.encode()))
    err = io.StringIO()
    status, res = import_files(str(tmp_path / "arch"), [str(tmp_path / "flows.log.1.gz")],
                               errout=err)
    assert status == 0
    assert (res.connections, res.unpaired, res.unparsed) == (3, 2, 1), err.getvalue()
    r = Reader(tmp_path / "arch")
    got = r.lookup(key(40000), T0 + 1000, 0)
    assert len(got) == 1 and got[0]["sport"] == 33000 and got[0]["fw"] == b"fw9"
    assert (got[0]["pkts_out"], got[0]["bytes_in"]) == (3, 2000)
    assert abs(int(got[0]["start_ms"]) - T0) < 1000
    got = r.lookup(key(61000, v6("2001:db8:2::1")), T0 + 1000, 0)
    assert len(got) == 1 and got[0]["src"] == addr16(v6("2001:db8:1::2"))


def test_pairer_dnat_line_order():
    # a port forward: client -> public:8080 translated to inside:80
    cl, pub, ins = v4("203.0.113.2"), v4("203.0.113.1"), v4("198.51.100.2")
    o = Flow(4, 6, cl, pub, 40000, 8080, cl, ins, 40000, 80, 3, 300, T0, T0 + 10,
             ORIGINAL, END_OF_FLOW, 0, 0, 5, 0)
    r = Flow(4, 6, ins, cl, 80, 40000, pub, cl, 8080, 40000, 2, 200, T0, T0 + 10,
             REPLY, END_OF_FLOW, 0, 0, 5, 0)
    p = CsvPairer("fw")
    for line in csv_text([[o, r]], T0 + 1000).splitlines():
        p.feed(line)
    rows = p.take()
    assert p.connections == 1 and p.unpaired == 0
    assert rows[0]["pkey"] == make_pkey(addr16(pub), 8080)
    assert rows[0]["xdst"] == addr16(ins)


def test_rows_from_a_batch_equal_rows_from_records():
    flows, events = [], []
    for i in range(5):
        ev, fl = conn(100 + i, 1000 + i, 20000 + i, T0 + i, T0 + 1000 + i, zone=i % 2,
                      mark=i * 0x1000001)
        flows += fl
        events.append(ev)
    ev6, fl6 = conn(200, 5, 61000, T0, T0 + 9, priv=v6("2001:db8:1::2"),
                    pub=v6("2001:db8:2::1"), rem=v6("2001:db8:2::2"))
    flows += fl6
    a = RowBuilder("fw1").rows(flows, events)
    b = RowBuilder("fw1").rows(FlowBatch.from_flows(flows).as_columns(), events)
    assert b.tobytes() == RowBuilder("fw1").rows(FlowBatch.from_flows(flows), events).tobytes()
    assert a.tobytes() == b.tobytes() and len(a) == 11
    assert b[-1]["src"] == addr16(v6("2001:db8:1::2")) and b[-2]["src"] == addr16(PRIV)
    assert b[5:-1]["zone"].tolist() == [0, 1, 0, 1, 0]
    assert b[5:-1]["mark"].tolist() == [i * 0x1000001 for i in range(5)]
    # out of the correlator's order: paired by conntrack id all the same
    shuffled = flows[1::2] + flows[0::2]
    c = RowBuilder("fw1").rows(shuffled, [])
    assert sorted(c["conn_id"].tolist()) == sorted(b[b["kind"] == KIND_FINAL]["conn_id"].tolist())
    assert set(c["pkts_in"].tolist()) == {2}


def test_the_archive_section():
    from nfflowd.app import config
    from nfflowd.errors import ConfigError
    d = config.parse({}).archive
    assert (d.enabled, d.path, d.retention_days, d.flush_interval) == \
        (False, "/var/lib/nfflowd/archive", 90, 5)
    sample = config.load(Path(__file__).resolve().parents[1] / "conf" / "nfflowd.yaml").archive
    assert sample.enabled and sample.path == d.path
    a = config.parse({"archive": {"enabled": True, "path": "/srv/a", "retention_days": 7,
                                  "flush_interval": 1, "firewall": "fw1"}}).archive
    assert (a.path, a.retention_days, a.flush_interval, a.firewall) == ("/srv/a", 7, 1, "fw1")
    ch = config.parse({"archive": {"enabled": True, "backend": "clickhouse",
                                   "url": "clickhouse://127.0.0.1:9000/db"}}).archive
    assert (ch.backend, ch.url, ch.table) == ("clickhouse", "clickhouse://127.0.0.1:9000/db",
                                              "nfflowd_archive")
    for bad in ({"path": "rel"}, {"retention_days": -1}, {"flush_interval": 0},
                {"colour": "red"}, {"backend": "sqlite"}, {"backend": "clickhouse"},
                {"backend": "clickhouse", "url": "http://x"},
                {"backend": "clickhouse", "url": "clickhouse://x", "table": "a;b"}):
        with pytest.raises(ConfigError):
            config.parse({"archive": {"enabled": True, **bad}})


def test_an_archive_only_daemon_records_something():
    from nfflowd.app import config
    from nfflowd.errors import ConfigError
    off = {"export": {"collectors": []}, "syslog": {"enabled": False}}
    with pytest.raises(ConfigError, match="would record nothing"):
        config.require_output(config.parse(off))
    config.require_output(config.parse({**off, "archive": {"enabled": True}}))


def test_pipeline_archives_only_for_the_daemon(tmp_path):
    from nfflowd.app import config
    from nfflowd.app.pipeline import Pipeline
    cfg = config.parse({"export": {"collectors": []},
                        "archive": {"enabled": True, "path": str(tmp_path / "a"),
                                    "flush_interval": 0.1, "retention_days": 0}})
    assert not Pipeline(cfg).wants_nat_events
    p = Pipeline(cfg, archive=True)
    assert p.wants_nat_events
    p.open()
    ev, flows = conn(7, 33000, 40000, T0, T0 + 5000)
    p.export(FlowBatch.from_flows(flows), [ev], T0 * 1_000_000, 1000)
    p.close()
    s = p.summary()
    assert s["archive_rows_written"] == 2 and s["archive_dropped"] == 0
    got = Reader(tmp_path / "a").lookup(key(40000), T0 + 100, 0)
    assert len(got) == 1 and got[0]["kind"] == KIND_FINAL


@pytest.mark.parametrize("args,why", [
    (["trace", "203.0.113.1:80", "--at", "not a time"], "not a time"),
    (["trace", "203.0.113.1", "--at", "1780000000"], "not an address and port"),
    (["trace", "203.0.113.1:80", "--at", "1780000000", "--window", "soon"], "not a duration"),
    (["trace", "203.0.113.1:80", "--at", "1780000000", "--proto", "xyz"], "unknown protocol"),
])
def test_cli_trace_bad_input_exits_2(tmp_path, capsys, args, why):
    from nfflowd.cli import main
    path = archive_with(tmp_path, conn(7, 33000, 40000, T0, T0 + 5000))
    assert main(args + ["--archive", path]) == 2
    err = capsys.readouterr().err
    assert why in err and "Traceback" not in err


def test_cli_trace_and_import(tmp_path, capsys):
    from nfflowd.cli import main
    path = archive_with(tmp_path, conn(7, 33000, 40000, T0, T0 + 5000))
    assert main(["trace", "203.0.113.1:40000", "--at", str(T0 / 1000), "--archive", path,
                 "--format", "csv"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "198.51.100.2" in out[1]
    assert main(["trace", "203.0.113.1:40000", "--at", str(T0 / 1000 - 60),
                 "--archive", path]) == 1
    assert main(["trace", "203.0.113.1:40000", "--at", "1", "--archive",
                 str(tmp_path / "missing")]) == 2
    assert "no archive" in capsys.readouterr().err
    log = tmp_path / "flows.log"
    log.write_text(csv_text([conn(8, 1000, 41000, T0, T0 + 10)[1]], T0 + 1000))
    assert main(["archive", "import", str(log), "--archive", path]) == 0
    assert "1 connections, 0 lines unpaired" in capsys.readouterr().err
    assert main(["archive", "import", str(tmp_path / "nope.log"), "--archive", path]) == 2


def test_damaged_archive_file_still_answers_from_the_cli(tmp_path, capsys):
    from nfflowd.cli import main
    path = archive_with(tmp_path, conn(7, 33000, 40000, T0, T0 + 5000),
                        conn(8, 33001, 40001, T0 + HOUR_MS, T0 + HOUR_MS + 5000))
    s = Store(path)
    s.open()
    s.seal_due(T0 + 5 * HOUR_MS)
    first = sorted(Path(path).glob("*/??.parquet"))[0]
    first.write_bytes(b"garbage")
    assert main(["trace", "203.0.113.1:40000", "--at", str(T0 / 1000), "--archive", path]) == 1
    err = capsys.readouterr().err
    assert "skipped damaged archive file" in err and str(first) in err
    assert main(["trace", "203.0.113.1:40001", "--at", str((T0 + HOUR_MS) / 1000),
                 "--archive", path]) == 0


def test_trace_private_lists_a_hosts_connections(tmp_path):
    other = v4("198.51.100.3")
    path = archive_with(tmp_path, conn(1, 1000, 40000, T0, T0 + 1000),
                        conn(2, 1001, 40001, T0 + 2 * HOUR_MS, T0 + 2 * HOUR_MS + 10),
                        conn(3, 1002, 40002, T0, T0 + 1000, priv=other),
                        conn(4, 1003, 40003, T0 + 5 * HOUR_MS, T0 + 5 * HOUR_MS + 10))
    s = Store(path)
    s.open()
    s.seal_due(T0 + 3 * HOUR_MS)            # some sealed, some still hot
    q = TraceQuery(None, None, private="198.51.100.2", start=str(T0 / 1000 - 60),
                   end=str((T0 + 3 * HOUR_MS) / 1000), fmt="json")
    out, err = io.StringIO(), io.StringIO()
    assert trace(path, q, out=out, errout=err) == 0, err.getvalue()
    assert [r["xsport"] for r in json.loads(out.getvalue())] == [40000, 40001]
    for bad in (TraceQuery(None, None, private="198.51.100.2", start="1"),
                TraceQuery("203.0.113.1:1", "1", private="198.51.100.2", start="1", end="2"),
                TraceQuery(None, None, private="nope", start="1", end="2"),
                TraceQuery(None, None)):
        assert trace(path, bad, out=io.StringIO(), errout=err) == 2


def test_write_errors_are_counted_and_said_once(tmp_path):
    class Broken(Store):
        def append(self, rows):
            raise OSError(28, "No space left on device")

    log = EventLog()
    w = ArchiveWriter(tmp_path, "fw1", flush_interval=0.05, log=log,
                      store=Broken(tmp_path), clock=lambda: T0 / 1000)
    w.open()
    for i in range(3):
        ev, fl = conn(i + 1, 1, 2, T0, T0 + 1)
        w.put(fl, [ev])
        time.sleep(0.1)
    w.close()
    assert w.stats()["archive_write_errors"] == 3
    assert log.events.count("archive_write_failed") == 1 and "No space" in w.last_error


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_archive_given_to_the_daemons_user(tmp_path):
    import pwd
    s = Store(tmp_path / "a")
    s.open()
    write(s, RowBuilder("fw1"), flows=conn(1, 1, 2, T0, T0 + 1)[1])
    s.close()
    Store(tmp_path / "a").open(owner="nobody")
    uid = pwd.getpwnam("nobody").pw_uid
    assert all(p.stat().st_uid == uid for p in [tmp_path / "a", *(tmp_path / "a").rglob("*")])


def test_reload_replaces_the_archive_writer_only_when_its_settings_change(tmp_path):
    from nfflowd.app import config
    from nfflowd.app.pipeline import Pipeline

    def cfg(flush):
        return config.parse({"export": {"collectors": []},
                             "archive": {"enabled": True, "path": str(tmp_path / "a"),
                                         "flush_interval": flush, "retention_days": 0}})
    p = Pipeline(cfg(0.1), archive=True)
    p.open()
    first = p.archive
    ev, flows = conn(7, 33000, 40000, T0, T0 + 5000)
    p.export(FlowBatch.from_flows(flows), [ev], T0 * 1_000_000, 1000)
    p.apply(p.prepare(cfg(0.1)))
    assert p.archive is first
    p.apply(p.prepare(cfg(0.2)))
    assert p.archive is not first and p.summary()["archive_rows_written"] == 2
    p.apply(p.prepare(config.parse({"export": {"collectors": []}})))
    assert p.archive is None and not p.wants_nat_events
    assert p.summary()["archive_rows_written"] == 2
    p.close()


def test_table_shows_local_time_with_the_offset_of_that_day(tmp_path, monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    time.tzset()
    try:
        path = archive_with(tmp_path, conn(7, 33000, 40000, T0, T0 + 5000))
        # T0 is in May (summer time, +02:00), whatever the date today
        local = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(T0 / 1000 + 1))
        status, out, err = run_trace(path, "203.0.113.1:40000", local)
        assert status == 0, err
        assert "+02:00" in out.splitlines()[1]
    finally:
        monkeypatch.undo()
        time.tzset()


def test_check_names_an_archive_path_that_cannot_be_made(tmp_path):
    from nfflowd.app import config
    from nfflowd.app.check import start_problems
    (tmp_path / "file").write_text("x")

    def problems(path):
        return start_problems(config.parse({"export": {"collectors": []},
                                            "archive": {"enabled": True, "path": path}}))
    assert problems(str(tmp_path / "new" / "archive")) == []
    assert problems(str(tmp_path / "file" / "archive")) == \
        [f"archive.path: {tmp_path / 'file'} is not a directory"]
