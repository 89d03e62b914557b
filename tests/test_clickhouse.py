"""The archive in a real ClickHouse server (Debian's clickhouse-server, run
here as a plain process on 127.0.0.1): the same rows give the same answers
as the embedded archive; trace and import through the command line;
retention drops partitions."""

from __future__ import annotations

import io
import json
import shutil
import socket
import subprocess
import time

import numpy as np
import pytest

from nfflowd.app.trace import TraceQuery, trace
from nfflowd.archive import DAY_MS, HOUR_MS, RowBuilder, addr16
from nfflowd.io.archive import Reader, Store
from nfflowd.record import FlowBatch
from tests.test_archive import PRIV, T0, conn, csv_text, key, v6

SERVER = shutil.which("clickhouse-server") or (
    "/usr/bin/clickhouse" if shutil.which("clickhouse") else None)
pytestmark = pytest.mark.skipif(SERVER is None, reason="needs clickhouse-server (Debian)")
pytest.importorskip("clickhouse_driver")

CONFIG = """<?xml version="1.0"?>
<yandex>
    <logger><level>warning</level><console>1</console></logger>
    <listen_host>127.0.0.1</listen_host>
    <tcp_port>{port}</tcp_port>
    <path>{d}/data/</path>
    <tmp_path>{d}/tmp/</tmp_path>
    <users_config>{d}/users.xml</users_config>
    <default_profile>default</default_profile>
    <default_database>default</default_database>
    <mark_cache_size>5368709</mark_cache_size>
</yandex>
"""
USERS = """<?xml version="1.0"?>
<yandex>
    <profiles><default><max_memory_usage>1000000000</max_memory_usage></default></profiles>
    <users><default><password></password><networks><ip>127.0.0.1</ip></networks>
        <profile>default</profile><quota>default</quota></default></users>
    <quotas><default><interval><duration>3600</duration><queries>0</queries><errors>0</errors>
        <result_rows>0</result_rows><read_rows>0</read_rows><execution_time>0</execution_time>
    </interval></default></quotas>
</yandex>
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from clickhouse_driver import Client
    d = tmp_path_factory.mktemp("clickhouse")
    port = _free_port()
    (d / "config.xml").write_text(CONFIG.format(port=port, d=d))
    (d / "users.xml").write_text(USERS)
    log = open(d / "server.log", "w")
    cmd = [SERVER, "--config-file", str(d / "config.xml")]
    if SERVER.endswith("/clickhouse"):
        cmd.insert(1, "server")
    p = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=d)
    try:
        end = time.monotonic() + 60
        while True:
            try:
                Client("127.0.0.1", port=port, connect_timeout=1).execute("SELECT 1")
                break
            except Exception:   # noqa: BLE001 - not up yet
                if p.poll() is not None or time.monotonic() > end:
                    raise RuntimeError("clickhouse-server did not start:\n"
                                       + (d / "server.log").read_text()[-3000:])
                time.sleep(0.3)
        yield f"clickhouse://127.0.0.1:{port}/default"
    finally:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(10)
        log.close()


def fill(store, *conns):
    b = RowBuilder("fw1")
    for ev, flows in conns:
        store.append(b.rows(flows, [ev] if ev else []))
        store.flush()


CONNS = [
    conn(1, 1000, 40000, T0, T0 + 5000),                            # ended
    conn(2, 1001, 40001, T0, T0 + 5 * HOUR_MS),                     # long
    conn(3, 1002, 40002, T0 + 60_000, T0 + 61_000, proto=17, zone=2, mark=0xFFFFFFFF),
    conn(4, 1234, 61000, T0, T0 + 5000, priv=v6("2001:db8:1::2"), pub=v6("2001:db8:2::1"),
         rem=v6("2001:db8:2::2")),
]
OPEN = conn(5, 1003, 40003, T0, 0)


def test_same_answers_as_the_embedded_archive(server, tmp_path):
    from nfflowd.io.clickhouse import ClickHouseReader, ClickHouseStore, with_table
    url = with_table(server, "same_answers")
    ch = ClickHouseStore(url)
    ch.open()
    emb = Store(tmp_path / "a")
    emb.open()
    for store in (ch, emb):
        fill(store, *CONNS, (OPEN[0], []))
    emb.seal_due(T0 + 3 * HOUR_MS)              # some of it sealed
    a, b = ClickHouseReader(url), Reader(tmp_path / "a")
    probes = [(key(40000), T0 + 1000), (key(40000), T0 + 9000), (key(40001), T0 + 3 * HOUR_MS),
              (key(40001), T0 + 6 * HOUR_MS), (key(40002), T0 + 60_500),
              (key(61000, v6("2001:db8:2::1")), T0 + 100), (key(40003), T0 + 7 * HOUR_MS),
              (key(40003), T0 - 10_000)]
    for k, t in probes:
        x, y = a.lookup(k, t, 2000), b.lookup(k, t, 2000)
        assert np.sort(x, order="conn_id").tobytes() == np.sort(y, order="conn_id").tobytes()
    assert [len(a.lookup(k, t, 2000)) for k, t in probes] == [1, 0, 1, 0, 1, 1, 1, 0]
    zoned = a.lookup(key(40002), T0 + 60_500, 2000)
    assert (zoned[0]["zone"], zoned[0]["mark"]) == (2, 0xFFFFFFFF)
    got = a.lookup(key(40003), T0 + 7 * HOUR_MS, 2000)
    assert got[0]["kind"] == 0 and got[0]["end_ms"] == 0              # open
    priv = a.lookup(addr16(PRIV), T0 + 2 * HOUR_MS, 3 * HOUR_MS, "src")
    assert sorted(priv["conn_id"].tolist()) == [1, 2, 3, 5]


def test_trace_and_import_through_the_command_line(server, tmp_path, capsys):
    from nfflowd.cli import main
    from nfflowd.io.clickhouse import ClickHouseStore, with_table
    url = with_table(server, "cli")
    s = ClickHouseStore(url)
    s.open()
    fill(s, CONNS[0])
    audit = tmp_path / "audit.log"
    assert main(["trace", "203.0.113.1:40000", "--at", str(T0 / 1000), "--archive", url,
                 "--format", "json", "--audit-log", str(audit)]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert rows[0]["src"] == "198.51.100.2" and rows[0]["sport"] == 1000
    assert json.loads(audit.read_text())["rows"] == 1
    log = tmp_path / "flows.log"
    log.write_text(csv_text([conn(9, 2000, 42000, T0, T0 + 10)[1]], T0 + 1000))
    assert main(["archive", "import", str(log), "--archive", url]) == 0
    assert main(["trace", "203.0.113.1:42000", "--at", str(T0 / 1000), "--archive", url,
                 "--audit-log", str(audit)]) == 0
    assert "198.51.100.2:2000" in capsys.readouterr().out
    # a server that is not there: exit 2 with the reason
    gone = f"clickhouse://127.0.0.1:{_free_port()}/default"
    out, err = io.StringIO(), io.StringIO()
    assert trace(gone, TraceQuery("203.0.113.1:1", "1"), str(audit), out, err) == 2
    assert "ClickHouse 127.0.0.1" in err.getvalue()


def test_retention_drops_partitions(server):
    from nfflowd.io.clickhouse import ClickHouseReader, ClickHouseStore, with_table
    url = with_table(server, "retention")
    s = ClickHouseStore(url, retention_days=1)
    s.open()
    fill(s, CONNS[0], conn(6, 1, 40006, T0 + 3 * DAY_MS, T0 + 3 * DAY_MS + 5))
    assert s.purge(T0 + 3 * DAY_MS) == 1
    r = ClickHouseReader(url)
    assert len(r.lookup(key(40000), T0, 0)) == 0
    assert len(r.lookup(key(40006), T0 + 3 * DAY_MS, 0)) == 1


def test_the_daemon_pipeline_writes_to_clickhouse(server):
    from nfflowd.app import config
    from nfflowd.app.pipeline import Pipeline
    from nfflowd.io.clickhouse import ClickHouseReader, with_table
    cfg = config.parse({"export": {"collectors": []}, "syslog": {"enabled": False},
                        "archive": {"enabled": True, "backend": "clickhouse", "url": server,
                                    "table": "pipeline", "flush_interval": 0.1,
                                    "retention_days": 0}})
    p = Pipeline(cfg, archive=True)
    p.open()
    ev, flows = CONNS[0]
    p.export(FlowBatch.from_flows(flows), [ev], T0 * 1_000_000, 1000)
    p.close()
    assert p.summary()["archive_rows_written"] == 2
    got = ClickHouseReader(with_table(server, "pipeline")).lookup(key(40000), T0 + 100, 0)
    assert len(got) == 1 and got[0]["kind"] == 1 and got[0]["src"] == addr16(PRIV)
