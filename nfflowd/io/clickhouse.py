"""The NAT trace archive in ClickHouse: the same rows, for many firewalls.

Rows go in as they come (OPEN at creation, FINAL at the end), batched by the
archive's writer thread (one insert per flush); a MergeTree table
partitioned by day of the row's event time and ordered by the lookup key then
start, so a lookup reads a few granules, and retention drops whole
partitions.  A lookup reads every row of the key that began before the end of
the window and merges them as the embedded archive does (``archive.merge``),
so both give the same answers.

SQL that runs on ClickHouse 18.16 (Debian 12) and current releases: no TTL
clause, addresses as FixedString(16) (IPv4 mapped), no IPv6 type.
"""

from __future__ import annotations

import datetime as dt
import re
from urllib.parse import parse_qs, urlparse

import numpy as np

from nfflowd.archive import DAY_MS, ROW, event_ms, merge, seen_at
from nfflowd.errors import NfflowdError

DEFAULT_TABLE = "nfflowd_archive"
_TYPES = {"i8": "Int64", "u1": "UInt8", "u2": "UInt16", "u4": "UInt32", "u8": "UInt64"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _ch_type(dtype: np.dtype) -> str:
    if dtype.kind == "S":
        return "String" if dtype.itemsize == 32 else f"FixedString({dtype.itemsize})"
    return _TYPES[f"{dtype.kind}{dtype.itemsize}"]


COLUMNS = ROW.names


class ClickHouseError(NfflowdError):
    """ClickHouse cannot be reached or refused a statement."""


def parse_url(url: str) -> dict:
    """``clickhouse://[user[:password]@]host[:port][/database][?table=name]``."""
    u = urlparse(url)
    if u.scheme != "clickhouse" or not u.hostname:
        raise ClickHouseError(f"not a clickhouse:// URL: {url!r}")
    db = (u.path or "/").strip("/") or "default"
    table = parse_qs(u.query).get("table", [DEFAULT_TABLE])[0]
    for name in (db, table):
        if not _NAME.fullmatch(name):
            raise ClickHouseError(f"not a plain ClickHouse name: {name!r}")
    return {"host": u.hostname, "port": u.port or 9000, "user": u.username or "default",
            "password": u.password or "", "database": db, "table": table}


def with_table(url: str, table: str) -> str:
    """``url`` naming ``table`` unless it names one already."""
    if "table=" in url:
        return url
    return f"{url}{'&' if '?' in url else '?'}table={table}"


def is_url(archive: str) -> bool:
    return archive.startswith("clickhouse://")


def create_sql(table: str) -> str:
    cols = ",\n  ".join(f"{n} {_ch_type(ROW.fields[n][0])}" for n in COLUMNS)
    return (f"CREATE TABLE IF NOT EXISTS {table} (\n  day Date,\n  {cols}\n) "
            "ENGINE = MergeTree() PARTITION BY toYYYYMMDD(day) ORDER BY (pkey, start_ms)")


class _Conn:
    def __init__(self, url: str):
        try:
            from clickhouse_driver import Client
        except ImportError:
            raise ClickHouseError("the clickhouse backend needs the clickhouse-driver "
                                  "package (pip install 'nfflowd[clickhouse]')") from None
        self.spec = parse_url(url)
        s = self.spec
        self.table = f"{s['database']}.{s['table']}"
        self.client = Client(s["host"], port=s["port"], user=s["user"], password=s["password"],
                             database=s["database"], connect_timeout=5, send_receive_timeout=30,
                             settings={"strings_as_bytes": True})

    def run(self, sql: str, params=None, **kw):
        from clickhouse_driver.errors import Error
        try:
            return self.client.execute(sql, params, **kw)
        except (Error, OSError, EOFError) as e:
            raise ClickHouseError(f"ClickHouse {self.spec['host']}:{self.spec['port']}: "
                                  f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") \
                from None


class ClickHouseStore:
    """The writer's side: ``append`` keeps rows, ``flush`` inserts them in
    one batch, ``purge`` drops the days past the retention."""

    def __init__(self, url: str, retention_days: float = 0, log=None):
        self.url = url
        self.retention_ms = int(retention_days * DAY_MS)
        self.log = log
        self.path = url
        self._pending: list[np.ndarray] = []
        self._conn: _Conn | None = None
        self.counters = {"archive_rows_written": 0, "archive_write_errors": 0,
                         "archive_hours_sealed": 0, "archive_damaged": 0,
                         "archive_partitions_removed": 0}

    def open(self, owner=None) -> None:
        self._conn = _Conn(self.url)
        self._conn.run(create_sql(self._conn.table))

    def append(self, rows: np.ndarray) -> None:
        if len(rows):
            self._pending.append(rows)

    def flush(self) -> None:
        if not self._pending:
            return
        rows = np.concatenate(self._pending)
        day = (event_ms(rows) // DAY_MS).tolist()
        epoch = dt.date(1970, 1, 1)
        cols = [[epoch + dt.timedelta(days=d) for d in day]]
        for n in COLUMNS:
            c = rows[n]
            cols.append(c.tolist())
        names = ", ".join(("day",) + COLUMNS)
        self._conn.run(f"INSERT INTO {self._conn.table} ({names}) VALUES", cols, columnar=True)
        self._pending = []          # kept until inserted: a failed insert is retried
        self.counters["archive_rows_written"] += len(rows)

    def seal_due(self, now_ms: int, grace_ms: int = 0) -> int:
        return 0                    # ClickHouse merges its parts itself

    def purge(self, now_ms: int) -> int:
        if not self.retention_ms:
            return 0
        cut = dt.datetime.fromtimestamp((now_ms - self.retention_ms) / 1000,
                                        dt.timezone.utc).strftime("%Y%m%d")
        parts = self._conn.run(
            "SELECT DISTINCT partition FROM system.parts WHERE database = %(db)s AND "
            "table = %(t)s AND active", {"db": self._conn.spec["database"],
                                         "t": self._conn.spec["table"]})
        n = 0
        for (p,) in parts:
            p = p.decode() if isinstance(p, bytes) else str(p)
            if p.isdigit() and p < cut:
                self._conn.run(f"ALTER TABLE {self._conn.table} DROP PARTITION {p}")
                n += 1
        self.counters["archive_partitions_removed"] += n
        return n

    def drop_hot(self) -> None:
        pass

    def close_hot(self, hours=None) -> None:
        self.flush()                # an import's batch goes now

    def close(self) -> None:
        if self._conn is not None:
            self._conn.client.disconnect()


class ClickHouseReader:
    """``Reader``'s lookups, answered by ClickHouse."""

    def __init__(self, url: str, log=None):
        self.conn = _Conn(url)
        self.damaged: list[str] = []
        self.conn.run(f"SELECT 1 FROM {self.conn.table} LIMIT 1")

    def lookup(self, value: bytes, t_ms: int, window_ms: int, field: str = "pkey") -> np.ndarray:
        if field not in ("pkey", "src"):
            raise ValueError(field)
        names = ", ".join(COLUMNS)
        sql = (f"SELECT {names} FROM {self.conn.table} WHERE {field} = unhex(%(v)s) "
               "AND start_ms <= %(hi)s")
        # every row of the key that began by then: a connection's rows all
        # come, whatever the end of each (merged below)
        got = self.conn.run(sql, {"v": value.hex(), "hi": t_ms + window_ms})
        rows = np.array([tuple(r) for r in got], dtype=ROW) if got else np.zeros(0, ROW)
        return seen_at(merge(rows), t_ms, window_ms)
