"""The NAT trace archive on disk: a hot tier of Arrow IPC streams and a sealed
tier of sorted, zstd-compressed Parquet files, one directory per UTC day.

Layout under the archive path::

    hot/YYYYMMDDHH-SESSION.arrows   rows of that hour as they come (fsynced at
                                    each flush; a torn tail after kill -9 is
                                    cut at the last whole batch)
    YYYY-MM-DD/HH.parquet           sealed: connections that ended in the hour
    YYYY-MM-DD/long.parquet         sealed: those that ended that day after
                                    living more than an hour
    open.parquet                    connections with no end yet
    seal.journal                    renames and deletes of a seal under way

Sealed files are sorted by the lookup key then start, in small row groups,
so a lookup reads the footer and one row group per file.  A seal writes its
files under temporary names, then a journal of renames and deletes, then
applies it: a seal cut short is finished at the next open.  Retention
removes whole day directories.  A file that cannot be read is skipped with a
warning and counted; the others still answer.

``ArchiveWriter`` runs the store in its own thread behind a bounded queue:
``put`` never blocks, and what does not fit is counted and said once per
episode.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import queue
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from nfflowd.errors import NfflowdError
from nfflowd.archive import (DAY_MS, HOUR_MS, ROW, RowBuilder, event_ms, key_order, merge,
                             merge_exact, plan_merge, query_hours, seal_masks, seen_at)

_TYPES = {"i8": pa.int64(), "u1": pa.uint8(), "u2": pa.uint16(), "u4": pa.uint32(),
          "u8": pa.uint64()}


def _arrow_type(dt_: np.dtype) -> pa.DataType:
    if dt_.kind == "S":
        return pa.string() if dt_.itemsize == 32 else pa.binary(dt_.itemsize)
    return _TYPES[f"{dt_.kind}{dt_.itemsize}"]


SCHEMA = pa.schema([(name, _arrow_type(ROW.fields[name][0])) for name in ROW.names])
_FW = "fw"
JOURNAL = "seal.journal"
OPEN_FILE = "open.parquet"


def to_table(rows: np.ndarray) -> pa.Table:
    cols = []
    n = len(rows)
    for name in ROW.names:
        col = rows[name]
        t = SCHEMA.field(name).type
        if name == _FW:
            cols.append(_fw_array(col))
        elif pa.types.is_fixed_size_binary(t):
            buf = pa.py_buffer(np.ascontiguousarray(col).tobytes())
            cols.append(pa.FixedSizeBinaryArray.from_buffers(t, n, [None, buf]))
        else:
            cols.append(pa.array(col, t))
    return pa.Table.from_arrays(cols, schema=SCHEMA)


def _fw_array(col: np.ndarray) -> pa.Array:
    """The firewall column as strings, made through a dictionary (one or a
    few firewalls per batch)."""
    if len(col) and (col == col[0]).all():
        names, idx = col[:1], np.zeros(len(col), np.int32)
    else:
        names, idx = np.unique(col, return_inverse=True)
    d = pa.array([bytes(x).decode("utf-8", "replace") for x in names], pa.string())
    return pa.DictionaryArray.from_arrays(pa.array(idx.astype(np.int32).reshape(-1)), d) \
        .cast(pa.string())


# columns a sealed file leaves null where they equal another (the translated
# destination of a source NAT is the original one): 5 bytes a connection
_SAME_AS = {"xdst": "dst", "xdport": "dport"}


def from_table(table: pa.Table) -> np.ndarray:
    rows = np.zeros(table.num_rows, ROW)
    if table.num_rows:
        for name in ROW.names:
            rows[name] = _column(table.column(name))
        for name, same in _SAME_AS.items():
            col = table.column(name)
            if col.null_count:
                null = col.is_null().to_numpy(zero_copy_only=False)
                rows[name][null] = rows[same][null]
    return rows


def _drop_repeats(table: pa.Table) -> pa.Table:
    """``_SAME_AS`` columns null where they repeat their twin."""
    for name, same in _SAME_AS.items():
        col = table.column(name)
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pc.if_else(pc.equal(col, table.column(same)),
                                                    pa.scalar(None, col.type), col))
    return table


def _hour_name(hour_ms: int) -> str:
    return dt.datetime.fromtimestamp(hour_ms / 1000, dt.timezone.utc).strftime("%Y%m%d%H")


def _hour_of_name(name: str) -> int:
    t = dt.datetime.strptime(name[:10], "%Y%m%d%H").replace(tzinfo=dt.timezone.utc)
    return int(t.timestamp()) * 1000


def _day_dir(hour_ms: int) -> str:
    return dt.datetime.fromtimestamp(hour_ms / 1000, dt.timezone.utc).strftime("%Y-%m-%d")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def path_problem(path) -> str | None:
    """Why the archive could not be made or written at ``path`` (None: it
    can), without making anything."""
    p = Path(path)
    while not p.exists():
        if p.parent == p:
            break
        p = p.parent
    if not p.is_dir():
        return f"{p} is not a directory"
    if not os.access(p, os.W_OK | os.X_OK):
        return f"{p} is not writable"
    return None


def hot_files(path: Path) -> dict[int, list[Path]]:
    """The hot tier's files under the archive ``path``, by the hour they hold
    (names that are not an hour's are left alone)."""
    out: dict[int, list[Path]] = {}
    for p in sorted((path / "hot").glob("*.arrows")):
        try:
            out.setdefault(_hour_of_name(p.name), []).append(p)
        except ValueError:
            continue
    return out


class ArchiveError(NfflowdError):
    """The archive cannot be used (missing, unreadable): the message says why."""


def read_hot_table(path: Path) -> tuple[pa.Table, bool]:
    """The whole batches of a hot file, and whether all of it was read (a
    torn tail after a crash cuts it at the last whole batch)."""
    parts, whole = [], True
    try:
        if os.path.getsize(path) == 0:
            return SCHEMA.empty_table(), True      # just made: nothing flushed yet
        with pa.memory_map(str(path)) as f:
            reader = ipc.open_stream(f)
            while True:
                try:
                    parts.append(reader.read_next_batch())
                except StopIteration:
                    break
    except FileNotFoundError:
        raise
    except (OSError, pa.ArrowException):
        whole = False
    return pa.Table.from_batches(parts, SCHEMA), whole


class Columns:
    """A table's columns as numpy arrays, made once each, for the sans-IO
    rules that take field names (``plan_merge``, ``seal_masks``,
    ``key_order``)."""

    def __init__(self, table: pa.Table):
        self.table = table
        self._cols: dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, name: str) -> np.ndarray:
        c = self._cols.get(name)
        if c is None:
            c = self._cols[name] = _column(self.table.column(name))
        return c


def _column(col) -> np.ndarray:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    n = len(col)
    if col.null_count:
        t = col.type
        zero = b"\0" * t.byte_width if pa.types.is_fixed_size_binary(t) else 0
        col = col.fill_null(pa.scalar(zero, t))
    if pa.types.is_fixed_size_binary(col.type):
        w = col.type.byte_width
        if n == 0:
            return np.zeros(0, f"S{w}")
        raw = np.frombuffer(col.buffers()[1], np.uint8, count=(col.offset + n) * w)
        return raw[col.offset * w:].view(f"S{w}")
    if pa.types.is_string(col.type) or pa.types.is_dictionary(col.type):
        d = col if pa.types.is_dictionary(col.type) else pc.dictionary_encode(col)
        names = np.array([(x or "").encode()[:32] for x in d.dictionary.to_pylist()] or [b""],
                         "S32")
        return names[d.indices.to_numpy(zero_copy_only=False)]
    return col.to_numpy(zero_copy_only=False)


def write_parquet(path: Path, table, meta: dict | None = None,
                  row_group: int = 8192) -> None:
    """Write rows (a table or a row array) sorted by key then start, and
    fsync; the caller renames ``path`` into place (the seal's journal)."""
    if isinstance(table, np.ndarray):
        table = to_table(table)
    table = _drop_repeats(table.take(key_order(Columns(table))))
    if meta:
        table = table.replace_schema_metadata({k: json.dumps(v) for k, v in meta.items()})
    pq.write_table(table, path, compression="zstd", compression_level=3,
                   row_group_size=row_group, write_statistics=["pkey", "start_ms", "end_ms"],
                   use_dictionary=["fw", "xsrc", "src", "xdst", "dst", "proto", "kind",
                                   "reason", "family", "zone", "mark"],
                   column_encoding={"start_ms": "DELTA_BINARY_PACKED",
                                    "end_ms": "DELTA_BINARY_PACKED"})
    with open(path, "rb") as f:
        os.fsync(f.fileno())


class Store:
    """The archive directory: writes (one writer at a time) and seals."""

    def __init__(self, path, retention_days: float = 0, log=None):
        self.path = Path(path)
        self.retention_ms = int(retention_days * DAY_MS)
        self.log = log
        self.session = f"{time.time_ns():x}-{os.getpid()}"
        self._hot: dict[int, tuple] = {}     # hour -> (file, writer)
        self._seq = 0
        self.counters = {"archive_rows_written": 0, "archive_write_errors": 0,
                         "archive_hours_sealed": 0, "archive_damaged": 0,
                         "archive_partitions_removed": 0}

    def open(self, owner: str | None = None) -> None:
        """Make the directories, finish a seal cut short; ``owner``: a user
        the daemon will run as, given the archive (when run as root)."""
        (self.path / "hot").mkdir(parents=True, exist_ok=True)
        if owner is not None and os.geteuid() == 0:
            import pwd
            pw = pwd.getpwnam(owner)
            for d, _dirs, files in os.walk(self.path):
                for name in [d] + [os.path.join(d, f) for f in files]:
                    os.chown(name, pw.pw_uid, pw.pw_gid)
        self.finish_seal()

    # -- hot tier --------------------------------------------------------------
    def append(self, rows: np.ndarray) -> None:
        """Rows into the hot files of their hours (durable at ``flush``)."""
        if len(rows) == 0:
            return
        hours = event_ms(rows) // HOUR_MS
        if (hours == hours[0]).all():
            parts = [(int(hours[0]), rows)]
        else:
            order = np.argsort(hours, kind="stable")
            hs = hours[order]
            cut = np.flatnonzero(np.r_[True, hs[1:] != hs[:-1], True])
            parts = [(int(hs[a]), rows[order[a:b]]) for a, b in zip(cut[:-1], cut[1:])]
        for h, part in parts:
            w = self._writer(h * HOUR_MS)
            w[1].write_table(to_table(part))
            self.counters["archive_rows_written"] += len(part)

    def _writer(self, hour: int):
        w = self._hot.get(hour)
        if w is None:
            self._seq += 1
            p = self.path / "hot" / f"{_hour_name(hour)}-{self.session}-{self._seq}.arrows"
            f = open(p, "wb")
            w = (f, ipc.new_stream(f, SCHEMA))
            self._hot[hour] = w
        return w

    def flush(self) -> None:
        for f, _ in self._hot.values():
            f.flush()
            os.fsync(f.fileno())

    def close_hot(self, hours=None) -> None:
        for h in list(self._hot if hours is None else hours):
            w = self._hot.pop(h, None)
            if w is not None:
                try:
                    w[1].close()
                    w[0].flush()
                    os.fsync(w[0].fileno())
                finally:
                    w[0].close()

    def close(self) -> None:
        self.close_hot()

    def drop_hot(self) -> None:
        """Forget the hot writers after a write error (what they hold up to
        the last flush stays); the next rows open new files."""
        for f, w in self._hot.values():
            try:
                f.close()
            except OSError:
                pass
        self._hot.clear()

    # -- sealing ---------------------------------------------------------------
    def seal_due(self, now_ms: int, grace_ms: int = 120_000) -> int:
        """Seal every hour that ended more than ``grace_ms`` ago; how many."""
        n = 0
        for hour, files in sorted(hot_files(self.path).items()):
            if hour + HOUR_MS + grace_ms <= now_ms:
                self.seal(hour, files)
                n += 1
        return n

    def _read_sealed(self, path: Path) -> pa.Table:
        if not path.exists():
            return SCHEMA.empty_table()
        try:
            return pq.read_table(path, schema=SCHEMA)
        except (OSError, pa.ArrowException) as e:
            self.counters["archive_damaged"] += 1
            bad = path.with_name(path.name + ".damaged")
            if self.log is not None:
                self.log.warning("archive_damaged_file", path=str(path), error=str(e),
                                 kept_as=str(bad))
            os.replace(path, bad)
            return SCHEMA.empty_table()

    def seal(self, hour: int, files: list[Path]) -> None:
        """Merge an hour's hot files, the hour's sealed file (rows that came
        late) and the open set; write the hour's file, the day's long file
        and the open set; then delete the hot files (through the journal)."""
        self.close_hot([hour])
        day = self.path / _day_dir(hour)
        day.mkdir(exist_ok=True)
        main_p = day / f"{_hour_name(hour)[8:]}.parquet"
        long_p = day / "long.parquet"
        open_p = self.path / OPEN_FILE
        parts = [self._read_sealed(open_p), self._read_sealed(main_p)]
        for p in files:
            t, whole = read_hot_table(p)
            if not whole:
                self.counters["archive_damaged"] += 1
                if self.log is not None:
                    self.log.warning("archive_torn_hot_file", path=str(p), rows_kept=t.num_rows)
            parts.append(t)
        rows = pa.concat_tables(parts)
        keep, exact = plan_merge(Columns(rows))
        merged = rows.take(keep)
        if len(exact):
            merged = pa.concat_tables([merged, to_table(merge_exact(from_table(rows.take(exact))))])
        cols = Columns(merged)
        main_m, long_m, open_m = seal_masks(cols, hour)
        if self.retention_ms:
            open_m &= cols["start_ms"] >= hour - self.retention_ms
        main = merged.filter(main_m)
        long_ = merged.filter(long_m)
        open_ = merged.filter(open_m)
        if long_.num_rows:
            long_ = pa.concat_tables([self._read_sealed(long_p), long_])
        tag = f".tmp-{self.session}"
        renames = []
        for table, p, always in ((main, main_p, True), (long_, long_p, False),
                                 (open_, open_p, True)):
            if table.num_rows or always:
                tmp = p.with_name(p.name + tag)
                write_parquet(tmp, table, {"hour": hour})
                renames.append((str(tmp), str(p)))
        journal = {"renames": renames, "deletes": [str(p) for p in files]}
        jp = self.path / JOURNAL
        with open(jp.with_name(JOURNAL + tag), "w") as f:
            json.dump(journal, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(jp.with_name(JOURNAL + tag), jp)
        _fsync_dir(self.path)
        self.finish_seal()
        self.counters["archive_hours_sealed"] += 1

    def finish_seal(self) -> None:
        """Apply the journal of a seal cut short (idempotent), then drop it."""
        jp = self.path / JOURNAL
        try:
            journal = json.loads(jp.read_text())
        except FileNotFoundError:
            return
        except (OSError, ValueError):
            jp.unlink(missing_ok=True)      # torn before it was complete: not applied
            return
        for tmp, final in journal["renames"]:
            if os.path.exists(tmp):
                os.replace(tmp, final)
                _fsync_dir(Path(final).parent)
        for p in journal["deletes"]:
            Path(p).unlink(missing_ok=True)
        _fsync_dir(self.path / "hot")
        jp.unlink()
        _fsync_dir(self.path)

    def purge(self, now_ms: int) -> int:
        """Remove the day directories and hot files past the retention."""
        if not self.retention_ms:
            return 0
        cut = now_ms - self.retention_ms
        n = 0
        for d in self.path.iterdir():
            if d.is_dir() and len(d.name) == 10 and d.name[4] == "-":
                try:
                    end = dt.datetime.strptime(d.name, "%Y-%m-%d").replace(
                        tzinfo=dt.timezone.utc).timestamp() * 1000 + DAY_MS
                except ValueError:
                    continue
                if end <= cut:
                    shutil.rmtree(d, ignore_errors=True)
                    n += 1
        for hour, files in hot_files(self.path).items():
            if hour + HOUR_MS <= cut and hour not in self._hot:
                for p in files:
                    p.unlink(missing_ok=True)
        self.counters["archive_partitions_removed"] += n
        return n


def _scalar(field: str, value: bytes):
    return pa.scalar(value, SCHEMA.field(field).type)


class Reader:
    """Read-only lookups, safe while a writer appends and seals.  Keeps the
    footers of sealed files it has opened (a second probe skips them)."""

    def __init__(self, path, log=None):
        self.path = Path(path)
        self.log = log
        self.damaged: list[str] = []
        self._meta: dict[str, tuple] = {}   # path -> (mtime_ns, ParquetFile)
        if not self.path.is_dir():
            raise ArchiveError(f"no archive at {self.path}")
        if not os.access(self.path, os.R_OK | os.X_OK):
            raise ArchiveError(f"archive {self.path} is not readable")
        if not (self.path / "hot").is_dir():
            raise ArchiveError(f"{self.path} is not an nfflowd archive (no hot/)")

    def _damaged(self, path: Path, error) -> None:
        if str(path) not in self.damaged:
            self.damaged.append(str(path))
            if self.log is not None:
                self.log(f"warning: skipped damaged archive file {path}: {error}")

    def _pfile(self, path: Path):
        st = path.stat()
        hit = self._meta.get(str(path))
        if hit is not None and hit[0] == st.st_mtime_ns:
            return hit[1]
        pf = pq.ParquetFile(path)
        self._meta[str(path)] = (st.st_mtime_ns, pf)
        return pf

    def _lookup(self, path: Path, field: str, value: bytes) -> np.ndarray:
        """The rows whose ``field`` is ``value`` in a sealed file (for the
        lookup key, only the row groups whose key range holds it are read;
        for another field, all of them)."""
        try:
            pf = self._pfile(path)
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowException) as e:
            self._damaged(path, e)
            return np.zeros(0, ROW)
        md = pf.metadata
        ki = pf.schema_arrow.get_field_index(field)
        groups = []
        for i in range(md.num_row_groups):
            st = md.row_group(i).column(ki).statistics
            if st is None or not st.has_min_max or st.min <= value <= st.max:
                groups.append(i)
        if not groups:
            return np.zeros(0, ROW)
        try:
            # the key column first: most files probed hold no row of it
            keys = pf.read_row_groups(groups, columns=[field]).column(0)
            hit = pc.equal(keys, _scalar(field, value))
            if not pc.any(hit).as_py():
                return np.zeros(0, ROW)
            t = pf.read_row_groups(groups)
        except (OSError, pa.ArrowException) as e:
            self._meta.pop(str(path), None)
            self._damaged(path, e)
            return np.zeros(0, ROW)
        return from_table(t.filter(hit))

    def _sealed_files(self, t_ms: int, window_ms: int) -> list[Path]:
        files = []
        for h in query_hours(t_ms, window_ms):
            files.append(self.path / _day_dir(h) / f"{_hour_name(h)[8:]}.parquet")
        files = [p for p in files if p.exists()]
        files += sorted(self.path.glob("????-??-??/long.parquet"))
        files.append(self.path / OPEN_FILE)
        return [p for p in files if p.exists()]

    def _wait_journal(self, timeout=10.0) -> None:
        end = time.monotonic() + timeout
        while (self.path / JOURNAL).exists() and time.monotonic() < end:
            time.sleep(0.05)

    def _stamp(self):
        try:
            return (self.path / OPEN_FILE).stat().st_mtime_ns
        except FileNotFoundError:
            return None

    def lookup(self, pkey: bytes, t_ms: int, window_ms: int, field: str = "pkey") -> np.ndarray:
        """Merged rows of the connections under ``pkey`` alive within
        ``t +- window``; with ``field="src"``, those of a private address
        (``pkey`` its 16 bytes: every row group of the files is read)."""
        for _ in range(5):
            self._wait_journal()
            stamp = self._stamp()
            try:
                rows = self._gather(field, pkey, t_ms, window_ms)
            except FileNotFoundError:
                continue                    # a seal moved files meanwhile
            if stamp == self._stamp() and not (self.path / JOURNAL).exists():
                return seen_at(merge(rows), t_ms, window_ms)
        raise ArchiveError("the archive kept changing under the query (a seal); try again")

    def _gather(self, field: str, value: bytes, t_ms: int, window_ms: int) -> np.ndarray:
        parts = [self._lookup(p, field, value) for p in self._sealed_files(t_ms, window_ms)]
        want = _scalar(field, value)
        for hour, files in hot_files(self.path).items():
            for p in files:
                # a torn tail is the writer's business (a crash, or a batch
                # being written): what is whole answers
                t, _whole = read_hot_table(p)
                parts.append(from_table(t.filter(pc.equal(t.column(field), want))))
        parts = [p for p in parts if len(p)]
        return np.concatenate(parts) if parts else np.zeros(0, ROW)



class ArchiveWriter:
    """The store in its own thread.  ``put(flows, nat_events)`` hands a batch
    over without blocking; a full queue drops it, counted in connections
    (``archive_dropped``) and said once per episode.  Rows are made in the
    thread, so the caller pays only the queue."""

    def __init__(self, path, firewall: str, retention_days: float = 0,
                 flush_interval: float = 5.0, queue_max: int = 1024, log=None,
                 clock=time.time, seal_grace: float = 120.0, store=None):
        """``store``: another backend with ``Store``'s writing methods
        (``io.clickhouse.ClickHouseStore``); default the files under ``path``."""
        self.store = store if store is not None else Store(path, retention_days, log)
        self.builder = RowBuilder(firewall)
        self.flush_interval = flush_interval
        self.seal_grace_ms = int(seal_grace * 1000)
        self.log = log
        self.clock = clock
        self._q: queue.Queue = queue.Queue(queue_max)
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self.batches_dropped = 0
        self._episode_dropped: int | None = None
        self.last_error: str | None = None
        self._failing = False           # an episode of write errors under way
        self._step_failed = False       # an error since the last flush
        self._step_wrote = False        # rows written since the last flush

    def open(self, owner: str | None = None) -> None:
        try:
            self.store.open(owner)
        except OSError as e:
            raise ArchiveError(f"cannot open the archive {self.store.path}: "
                               f"{e.strerror or e}") from None
        except NfflowdError as e:
            raise ArchiveError(f"cannot open the archive: {e}") from None
        self._thread = threading.Thread(target=self._run, name="nfflowd-archive", daemon=True)
        self._thread.start()

    def put(self, flows, nat_events) -> bool:
        if not len(flows) and not nat_events:
            return True
        if isinstance(flows, list):
            flows = list(flows)             # the caller may reuse its list
        elif getattr(flows, "flow_list", None) is not None:
            flows = list(flows.flow_list)
        try:
            self._q.put_nowait((flows, nat_events))
        except queue.Full:
            n = len(flows) // 2 + sum(1 for e in nat_events if e.created)
            self.dropped += n
            self.batches_dropped += 1
            if self._episode_dropped is None:
                self._episode_dropped = self.dropped - n
                if self.log is not None:
                    self.log.warning("archive_behind", queue=self._q.maxsize,
                                     meaning="connections are not archived and are "
                                             "counted in archive_dropped")
            return False
        if self._episode_dropped is not None and self._q.qsize() < self._q.maxsize // 2:
            if self.log is not None:
                self.log.info("archive_caught_up", dropped=self.dropped - self._episode_dropped)
            self._episode_dropped = None
        return True

    def flush_now(self) -> None:
        """Ask the thread to flush (tests, shutdown)."""
        self._q.put(None)

    def _run(self) -> None:
        deadline = time.monotonic() + self.flush_interval
        while True:
            try:
                item = self._q.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                item = None
            if item == "stop":
                self._step(final=True)
                return
            if item is not None:
                try:
                    self.store.append(self.builder.rows(*item))
                    self._step_wrote = True
                except Exception as e:      # noqa: BLE001 - a disk error must not end the thread
                    self._error(e)
                    self._step_failed = True
                if time.monotonic() < deadline:
                    continue
            self._step()
            deadline = time.monotonic() + self.flush_interval

    def _step(self, final: bool = False) -> None:
        try:
            self.store.flush()
            now_ms = int(self.clock() * 1000)
            self.store.seal_due(now_ms, self.seal_grace_ms)
            self.store.purge(now_ms)
            if final:
                self.store.close()
            if self._failing and self._step_wrote and not self._step_failed:
                if self.log is not None:
                    self.log.info("archive_writes_again")
                self._failing = False
        except Exception as e:              # noqa: BLE001
            self._error(e)
        self._step_failed = self._step_wrote = False

    def _error(self, e: Exception) -> None:
        self.store.counters["archive_write_errors"] += 1
        self.last_error = f"{type(e).__name__}: {e}"
        self.store.drop_hot()
        if not self._failing and self.log is not None:
            self.log.warning("archive_write_failed", path=str(self.store.path),
                             error=self.last_error)
        self._failing = True

    def close(self, timeout: float = 10.0) -> None:
        if self._thread is None:
            return
        self._q.put("stop")
        self._thread.join(timeout)
        self._thread = None

    def stats(self) -> dict:
        c = dict(self.store.counters)
        c["archive_dropped"] = self.dropped
        c["archive_backlog"] = self._q.qsize()
        c["archive_unpaired"] = self.builder.unpaired
        return c
