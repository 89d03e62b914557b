"""`nfflowd trace` and `nfflowd archive import`: questions to the archive.

``trace`` names the connection(s) whose public side (the translated source,
or a port forward's public destination) held an address and port at a time,
and appends every query to an audit log before it answers (these are legal
requests).  Exit statuses: 0 found, 1 nothing found, 2 a bad query or an
archive that cannot be read (the reason on stderr).

``import_files`` reads flow-tools CSV lines as the syslog mirror writes them
(plain or gzipped, syslog prefixes tolerated) back into connections, and
writes them to the archive as ended connections.
"""

from __future__ import annotations

import csv
import datetime as dt
import getpass
import gzip
import io
import json
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from nfflowd.archive import (QueryError, make_pkey, parse_addr, parse_proto, parse_target,
                             parse_time, parse_window, row_dict)
from nfflowd.flowtools_import import CsvPairer

EXIT_FOUND, EXIT_NONE, EXIT_BAD = 0, 1, 2
DEFAULT_ARCHIVE = "/var/lib/nfflowd/archive"
# the audit log of queries to a ClickHouse archive (an embedded one keeps its own)
DEFAULT_AUDIT = "/var/lib/nfflowd/trace-audit.log"
AUDIT_NAME = "audit.log"


@dataclass
class TraceQuery:
    """``target`` (public ADDR:PORT) at ``at`` within ``window``; or, with
    ``private`` (an address), its connections from ``start`` to ``end``."""
    target: str | None
    at: str | None
    window: str = "2s"
    proto: str | None = None
    fmt: str = "table"
    private: str | None = None
    start: str | None = None
    end: str | None = None


def _plan(q: TraceQuery) -> tuple[str, bytes, int, int]:
    """(field, value, t_ms, window_ms) of a query; QueryError if it is bad."""
    if q.private is not None:
        if q.target is not None or q.at is not None:
            raise QueryError("--private takes --from and --to, not ADDR:PORT or --at")
        if q.start is None or q.end is None:
            raise QueryError("--private needs --from and --to")
        lo, hi = parse_time(q.start), parse_time(q.end)
        if hi < lo:
            raise QueryError("--to is before --from")
        return "src", parse_addr(q.private), (lo + hi) // 2, (hi - lo + 1) // 2
    if q.target is None or q.at is None:
        raise QueryError("give ADDR:PORT and --at TIME (or --private ADDR --from T1 --to T2)")
    addr, port = parse_target(q.target)
    return "pkey", make_pkey(addr, port), parse_time(q.at), parse_window(q.window)


def _who() -> str:
    try:
        name = getpass.getuser()
    except (KeyError, OSError):
        name = str(os.getuid())
    sudo = os.environ.get("SUDO_USER")
    return f"{name} (sudo by {sudo})" if sudo and sudo != name else name


def audit(path: str, entry: dict) -> None:
    """Append one JSON line; raises OSError if it cannot."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def trace(archive: str, q: TraceQuery, audit_log: str | None = None,
          out=None, errout=None) -> int:
    out = out or sys.stdout
    errout = errout or sys.stderr

    def fail(msg: str) -> int:
        print(f"nfflowd trace: {msg}", file=errout)
        return EXIT_BAD

    try:
        field_, value, t_ms, window_ms = _plan(q)
        proto = parse_proto(q.proto) if q.proto else None
    except QueryError as e:
        return fail(str(e))
    from nfflowd.io.archive import ArchiveError, Reader
    from nfflowd.io.clickhouse import ClickHouseError, ClickHouseReader, is_url
    if audit_log is None:
        audit_log = DEFAULT_AUDIT if is_url(archive) else os.path.join(archive, AUDIT_NAME)
    entry = {"when": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
             "who": _who(), "archive": archive if is_url(archive) else os.path.abspath(archive),
             "query": {"target": q.target, "at": q.at, "private": q.private,
                       "from": q.start, "to": q.end, "at_utc_ms": t_ms,
                       "window_ms": window_ms, "proto": q.proto}}
    try:
        say = lambda m: print(f"nfflowd trace: {m}", file=errout)  # noqa: E731
        reader = ClickHouseReader(archive, say) if is_url(archive) else Reader(archive, say)
        rows = reader.lookup(value, t_ms, window_ms, field_)
    except (ArchiveError, ClickHouseError) as e:
        return _audited(fail(str(e)), audit_log, entry, 0, str(e), errout)
    except OSError as e:
        msg = f"cannot read the archive {archive}: {e.strerror or e}"
        return _audited(fail(msg), audit_log, entry, 0, msg, errout)
    if proto is not None:
        rows = rows[rows["proto"] == proto]
    rows = rows[np.argsort(rows["start_ms"], kind="stable")]
    if reader.damaged:
        entry["damaged_files_skipped"] = len(reader.damaged)
    status = _audited(EXIT_FOUND if len(rows) else EXIT_NONE, audit_log, entry, len(rows),
                      None, errout)
    if status == EXIT_BAD:
        return status               # not audited: not answered
    write_rows(rows, q.fmt, out)
    if not len(rows):
        print("nfflowd trace: no connection held that address and port then", file=errout)
    return status


def _audited(status: int, path: str, entry: dict, n: int, error: str | None, errout) -> int:
    entry["rows"] = n
    if error:
        entry["error"] = error
    try:
        audit(path, entry)
    except OSError as e:
        if error is not None:
            return status           # failed already, and said why
        print(f"nfflowd trace: cannot append to the audit log {path}: {e.strerror or e}",
              file=errout)
        return EXIT_BAD
    return status


_TABLE_COLS = ("start", "end", "proto", "private", "public", "remote", "packets", "bytes",
               "state", "firewall")


def write_rows(rows, fmt: str, out) -> None:
    if fmt == "json":
        json.dump([row_dict(r) for r in rows], out, indent=1)
        out.write("\n")
        return
    if fmt == "csv":
        dicts = [row_dict(r) for r in rows]
        w = csv.writer(out, lineterminator="\n")
        keys = list(row_dict(np.zeros(1, rows.dtype)[0]).keys())
        w.writerow(keys)
        for d in dicts:
            w.writerow(["" if d[k] is None else d[k] for k in keys])
        return
    lines = [_TABLE_COLS]
    for r in rows:
        d = row_dict(r, None)
        lines.append((d["start"].replace("T", " "),
                      (d["end"] or "open").replace("T", " "), d["proto"],
                      _hp(d["src"], d["sport"]), _hp(d["xsrc"], d["xsport"]),
                      _hp(d["dst"], d["dport"]) if d["dst"] == d["xdst"] and d["dport"] == d["xdport"]
                      else f"{_hp(d['dst'], d['dport'])} -> {_hp(d['xdst'], d['xdport'])}",
                      f"{d['pkts_out']}/{d['pkts_in']}", f"{d['bytes_out']}/{d['bytes_in']}",
                      d["state"], d["firewall"]))
    widths = [max(len(str(x[i])) for x in lines) for i in range(len(_TABLE_COLS))]
    for x in lines:
        out.write("  ".join(str(v).ljust(w) for v, w in zip(x, widths)).rstrip() + "\n")


def _hp(a: str, p: int) -> str:
    return f"[{a}]:{p}" if ":" in a else f"{a}:{p}"


# ---- import ----------------------------------------------------------------

@dataclass
class ImportResult:
    lines: int = 0
    connections: int = 0
    unpaired: int = 0
    unparsed: int = 0
    files: list = field(default_factory=list)


def _open_text(path: str):
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic == b"\x1f\x8b":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", errors="replace")
    return open(path, encoding="utf-8", errors="replace")


def import_files(archive: str, paths, firewall: str | None = None,
                 errout=None, batch: int = 100_000) -> tuple[int, ImportResult]:
    """Import CSV lines from ``paths`` into ``archive``; (exit status, counts)."""
    from nfflowd.io.archive import Store
    from nfflowd.io.clickhouse import ClickHouseError, ClickHouseStore, is_url
    errout = errout or sys.stderr
    res = ImportResult()
    store = ClickHouseStore(archive) if is_url(archive) else Store(archive)
    try:
        store.open()
    except (OSError, ClickHouseError) as e:
        print(f"nfflowd archive import: cannot open the archive {archive}: "
              f"{getattr(e, 'strerror', None) or e}", file=errout)
        return EXIT_BAD, res
    status = 0
    try:
        for p in paths:
            pairer = CsvPairer(firewall)
            try:
                with _open_text(p) as f:
                    for line in f:
                        res.lines += 1
                        pairer.feed(line)
                        if len(pairer.rows) >= batch:
                            store.append(pairer.take())
                            store.close_hot()
            except (OSError, EOFError, gzip.BadGzipFile) as e:
                print(f"nfflowd archive import: {p}: {getattr(e, 'strerror', None) or e}",
                      file=errout)
                status = EXIT_BAD
            pairer.end()
            store.append(pairer.take())
            store.close_hot()
            res.connections += pairer.connections
            res.unpaired += pairer.unpaired
            res.unparsed += pairer.unparsed
            res.files.append(p)
        store.flush()
        store.seal_due(int(time.time() * 1000), grace_ms=120_000)
    finally:
        store.close()
    print(f"nfflowd archive import: {res.lines} lines, {res.connections} connections, "
          f"{res.unpaired} lines unpaired, {res.unparsed} lines not flow-tools CSV",
          file=errout)
    return status, res

