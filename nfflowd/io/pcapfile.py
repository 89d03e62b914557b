"""Capture files in: classic pcap and pcapng, read without libpcap.

Strategy: the reader takes a path, a binary file object or bytes, reads it in
large chunks and yields packets in batches of ``(timestamp_ns, linktype,
captured_bytes, original_length)``.  Nothing is checked per packet beyond what
is needed to find the next record, so the loop stays cheap; the link layer is
left to ``nfflowd.packet``.

Formats (both byte orders):

- pcap: magic 0xA1B2C3D4 (microsecond timestamps) and 0xA1B23C4D (nanosecond);
  one link type for the whole file (low 16 bits of the header's network field,
  the upper bits may carry an FCS length).
- pcapng (draft-ietf-opsawg-pcapng): Section Header Block, Interface Description
  Block (link type, snaplen, ``if_tsresol`` and ``if_tsoffset`` per interface),
  Enhanced Packet Block, Simple Packet Block (no timestamp: the last one seen is
  reused) and the obsolete Packet Block.  Every other block is skipped.  A new
  section resets the interfaces and may change the byte order.

For the vectorised meter (``record_chunks``, numpy), a classic pcap file is
read in chunks of some 32 MB, one buffer refilled in place, and the record
offsets of each chunk are found at once (``walk_records``) instead of one
tuple per packet.

Errors: a bad file header, a record cut short, a record header that cannot be
right (a captured length above 256 MiB, a block length not a multiple of 4)
raise ``CaptureError`` -- but only after every complete packet before the
problem has been yielded, so a caller metering the file keeps every flow seen
so far.  Packets whose captured length is below their original length
(snaplen-cut) are not errors: they are counted in ``snapped`` (NetFlow counts
the IP length from the headers, which a snaplen of 96 still holds).
"""

from __future__ import annotations

import io
import os
import struct
from typing import BinaryIO, Iterator, Union

from nfflowd.errors import SourceError

__all__ = ["CaptureError", "CaptureReader", "read_packets",
           "PCAP_MAGIC_US", "PCAP_MAGIC_NS", "PCAPNG_SHB", "walk_records", "walk_chain",
           "walk_lockstep"]


class CaptureError(SourceError):
    """A capture file that cannot be read on: bad header, truncated, corrupt.

    ``offset`` is the byte offset in the file where the problem starts;
    ``packets`` how many complete packets were read (and yielded) before it.
    """

    def __init__(self, message: str, offset: int = 0, packets: int = 0):
        self.offset = offset
        self.packets = packets
        super().__init__(f"{message} (at byte {offset}, after {packets} packets)")


PCAP_MAGIC_US = 0xA1B2C3D4
PCAP_MAGIC_NS = 0xA1B23C4D
PCAPNG_SHB = 0x0A0D0D0A
PCAPNG_BOM = 0x1A2B3C4D

# pcapng block types
_IDB = 0x00000001
_PB = 0x00000002      # obsolete Packet Block
_SPB = 0x00000003
_EPB = 0x00000006

MAX_CAPLEN = 256 * 1024 * 1024
SLACK = 256         # bytes after a record chunk's buffer that can be read (stale, never used)   # wiretap's limit is lower; anything above is corrupt
CHUNK = 1 << 20

Source = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]


class _Interface:
    __slots__ = ("linktype", "snaplen", "mul", "div", "offset_ns")

    def __init__(self, linktype: int, snaplen: int):
        self.linktype = linktype
        self.snaplen = snaplen
        self.mul = 1000          # default resolution: microseconds
        self.div = 1
        self.offset_ns = 0

    def set_tsresol(self, v: int) -> None:
        # pcapng if_tsresol: bit 7 clear: 10^-v s; set: 2^-(v & 0x7f) s
        if v & 0x80:
            self.mul, self.div = 1_000_000_000, 1 << (v & 0x7F)
        else:
            e = v & 0x7F
            if e <= 9:
                self.mul, self.div = 10 ** (9 - e), 1
            else:
                self.mul, self.div = 1, 10 ** (e - 9)


class CaptureReader:
    """Iterate over the packets of one capture file.

    ``CaptureReader(source).batches()`` yields lists of
    ``(timestamp_ns, linktype, data: bytes, original_length)``; iterating the
    reader itself yields the same tuples one by one.  Counters are filled as the
    file is read: ``format`` ('pcap' or 'pcapng'), ``packets``, ``snapped``
    (captured length below original length), ``skipped_blocks`` (pcapng blocks
    that carry no packet), ``bytes_read``.
    """

    def __init__(self, source: Source, batch_size: int = 4096, chunk_size: int = CHUNK):
        self._source = source
        self.batch_size = max(1, int(batch_size))
        self.chunk_size = max(64, int(chunk_size))
        self.format: str | None = None
        self.packets = 0
        self.snapped = 0
        self.skipped_blocks = 0
        self.bytes_read = 0
        self.linktypes: set[int] = set()

    # -- input -------------------------------------------------------------
    def _open(self):
        src = self._source
        if isinstance(src, (bytes, bytearray, memoryview)):
            return io.BytesIO(bytes(src)), True
        if isinstance(src, (str, os.PathLike)):
            try:
                return open(src, "rb"), True
            except OSError as e:
                raise CaptureError(f"cannot open capture {os.fspath(src)!r}: {e.strerror or e}")
        return src, False

    def __iter__(self):
        for batch in self.batches():
            yield from batch

    def record_chunks(self, chunk_size: int = 1 << 25) -> Iterator:
        """For the vectorised meter (numpy): a classic pcap file gives
        ``RecordChunk`` objects (a buffer of about ``chunk_size`` bytes and
        the offsets of its complete records, found by ``walk_records``); a
        pcapng file gives the lists ``batches`` gives.  Same records,
        counters and errors (raised after the last complete chunk) as
        ``batches``."""
        size = max(64, int(chunk_size))
        return self._read(lambda f, head: self._pcap_chunks(f, head, size))

    def _read(self, pcap) -> Iterator:
        """Open the source and yield what ``pcap(f, head)`` yields for a
        classic pcap file, what ``_pcapng`` yields for a pcapng one (told by
        the magic number); the file is closed after (or on error)."""
        f, close = self._open()
        try:
            head, magic_le = _magic(f)
            if magic_le == PCAPNG_SHB:
                self.format = "pcapng"
                yield from self._pcapng(f, head)
            elif magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) or \
                    struct.unpack(">I", head)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                self.format = "pcap"
                yield from pcap(f, head)
            else:
                raise CaptureError(f"not a pcap or pcapng file: bad magic number 0x{head.hex()}")
        finally:
            if close:
                f.close()

    def _pcap_header(self, f, head: bytes) -> tuple[str, bool, int, int]:
        """The rest of a classic pcap file header after its magic ``head``:
        (byte order for struct, nanosecond timestamps, snaplen, linktype)."""
        rest = _read(f, 20)
        if len(rest) < 20:
            raise CaptureError("truncated pcap file header", len(head) + len(rest))
        bo = "<" if struct.unpack("<I", head)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS) else ">"
        magic, vmaj, vmin, _tz, _sig, snaplen, network = struct.unpack(bo + "IHHiIII",
                                                                       head + rest)
        if vmaj != 2:
            raise CaptureError(f"unsupported pcap version {vmaj}.{vmin}", 4)
        linktype = network & 0xFFFF
        self.linktypes.add(linktype)
        return bo, magic == PCAP_MAGIC_NS, snaplen, linktype

    def _truncated(self, left: int, at: int) -> CaptureError:
        """The error for ``left`` bytes of a record left over at the end."""
        what = "record header" if left < 16 else "packet data"
        return CaptureError(f"truncated pcap file: cut in a {what} ({left} bytes left over)",
                            at, self.packets)

    def _pcap_chunks(self, f, head: bytes, chunk_size: int) -> Iterator:
        import numpy as np
        bo, nano, snaplen, linktype = self._pcap_header(f, head)
        u32 = np.dtype(bo + "u4")
        # a file smaller than a chunk: a buffer of its size (the buffer's
        # pages are all touched when it is made), the same single chunk
        try:
            rest = os.fstat(f.fileno()).st_size - f.tell()
            if 0 <= rest < chunk_size:
                chunk_size = max(64, rest)
        except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
            pass
        # one buffer, refilled in place: the unread rest of a record moves to
        # its start and the file is read after it (no new 32 MB per chunk)
        store = bytearray(chunk_size + 4096)
        have = 0
        pos = 0
        base = 24
        eof = False
        readinto = getattr(f, "readinto", None)
        while True:
            left = have - pos
            if left + chunk_size + SLACK > len(store):   # a record longer than a chunk
                bigger = bytearray(left + chunk_size + 4096)
                bigger[:left] = store[pos:have]
                store = bigger
                base += pos
                pos = 0
            elif pos:
                store[:left] = store[pos:have]
                base += pos
                pos = 0
            mv = memoryview(store)
            try:
                if readinto is not None:
                    got = readinto(mv[left:left + chunk_size]) or 0
                else:
                    more = _read(f, chunk_size)
                    got = len(more)
                    mv[left:left + got] = more
            except OSError as e:
                raise CaptureError(f"cannot read capture: {e}")
            finally:
                mv.release()
            self.bytes_read += got
            have = left + got
            eof = not got
            buf = memoryview(store)[:have]
            offs, stop, bad = walk_records(buf, pos, u32, snaplen, nano)
            n = len(offs)
            if n:
                chunk = RecordChunk(buf, offs, linktype, nano, u32, memoryview(store))
                _ts, cap, orig = chunk.fields()
                self.packets += n
                self.snapped += int(np.count_nonzero(cap < orig))
                yield chunk
                del chunk, _ts, cap, orig      # the buffer is refilled next
            pos = stop
            if bad:
                caplen = struct.unpack_from(bo + "I", buf, pos + 8)[0]
                raise CaptureError(f"corrupt pcap record header: captured length {caplen}",
                                   base + pos, self.packets)
            if eof:
                break
        if pos < len(buf):
            raise self._truncated(len(buf) - pos, base + pos)

    def batches(self) -> Iterator[list]:
        return self._read(self._pcap)

    # -- classic pcap ------------------------------------------------------
    def _refill(self, f, buf: bytes, pos: int, base: int, chunk_size: int):
        """The next chunk after the unread rest of ``buf`` (from ``pos``):
        returns (buf, pos, base, eof); at end of file the buffer is unchanged."""
        more = _read(f, chunk_size)
        self.bytes_read += len(more)
        if not more:
            return buf, pos, base, True
        return buf[pos:] + more, 0, base + pos, False

    def _pcap(self, f, head: bytes) -> Iterator[list]:
        bo, nano, _snaplen, linktype = self._pcap_header(f, head)
        rec = struct.Struct(bo + "IIII")
        unpack_from = rec.unpack_from
        batch_size = self.batch_size
        chunk_size = self.chunk_size
        buf = b""
        pos = 0
        base = 24          # file offset of buf[0]
        batch: list = []
        append = batch.append
        npk = 0
        snapped = 0
        eof = False
        err: CaptureError | None = None
        while True:
            blen = len(buf)
            # parse every complete record in buf (the hot loop: keep it flat)
            while pos + 16 <= blen:
                sec, frac, caplen, origlen = unpack_from(buf, pos)
                end = pos + 16 + caplen
                if end > blen:
                    if caplen > MAX_CAPLEN:
                        err = CaptureError(f"corrupt pcap record header: captured length {caplen}",
                                           base + pos, self.packets + npk)
                    break
                if caplen < origlen:
                    snapped += 1
                append((sec * 1_000_000_000 + frac if nano
                        else sec * 1_000_000_000 + frac * 1000,
                        linktype, buf[pos + 16:end], origlen))
                pos = end
                npk += 1
                if npk >= batch_size:
                    self.packets += npk
                    self.snapped += snapped
                    npk = snapped = 0
                    yield batch
                    batch = []
                    append = batch.append
            if err is not None or eof:
                break
            buf, pos, base, eof = self._refill(f, buf, pos, base, chunk_size)
        self.packets += npk
        self.snapped += snapped
        if batch:
            yield batch
        if err is not None:
            raise err
        if pos < len(buf):
            raise self._truncated(len(buf) - pos, base + pos)

    # -- pcapng ------------------------------------------------------------
    def _pcapng(self, f, head: bytes) -> Iterator[list]:
        batch_size = self.batch_size
        chunk_size = self.chunk_size
        buf = head
        pos = 0
        base = 0
        batch: list = []
        ifaces: list[_Interface] = []
        bo = None
        u32 = None
        last_ts = 0
        eof = False
        err: CaptureError | None = None
        while True:
            blen = len(buf)
            while pos + 12 <= blen:
                btype_le = struct.unpack_from("<I", buf, pos)[0]
                if btype_le == PCAPNG_SHB:
                    if pos + 12 > blen:
                        break
                    bom = buf[pos + 8:pos + 12]
                    if bom == b"\x4d\x3c\x2b\x1a":
                        bo = "<"
                    elif bom == b"\x1a\x2b\x3c\x4d":
                        bo = ">"
                    else:
                        err = CaptureError("corrupt pcapng section header: bad byte-order magic",
                                           base + pos, self.packets)
                        break
                    u32 = struct.Struct(bo + "I")
                if bo is None:
                    err = CaptureError("pcapng file does not start with a section header",
                                       base + pos, self.packets)
                    break
                btype, blk_len = struct.unpack_from(bo + "II", buf, pos)
                if blk_len < 12 or blk_len % 4 or blk_len > MAX_CAPLEN:
                    err = CaptureError(f"corrupt pcapng block: length {blk_len}",
                                       base + pos, self.packets)
                    break
                end = pos + blk_len
                if end > blen:
                    break
                if u32.unpack_from(buf, end - 4)[0] != blk_len:
                    err = CaptureError("corrupt pcapng block: trailing length does not match",
                                       base + pos, self.packets)
                    break
                body = pos + 8
                bend = end - 4
                try:
                    if btype == _EPB or btype == _PB:
                        if bend - body < 20:
                            raise ValueError("packet block too short")
                        if btype == _EPB:
                            ifid, tsh, tsl, caplen, origlen = struct.unpack_from(bo + "IIIII", buf, body)
                        else:
                            ifid, _drops, tsh, tsl, caplen, origlen = struct.unpack_from(
                                bo + "HHIIII", buf, body)
                        if ifid >= len(ifaces):
                            raise ValueError(f"packet for undeclared interface {ifid}")
                        if body + 20 + caplen > bend:
                            raise ValueError(f"captured length {caplen} beyond the block")
                        itf = ifaces[ifid]
                        ts = ((tsh << 32) | tsl) * itf.mul // itf.div + itf.offset_ns
                        last_ts = ts
                        data = buf[body + 20:body + 20 + caplen]
                        if caplen < origlen:
                            self.snapped += 1
                        batch.append((ts, itf.linktype, data, origlen))
                        self.packets += 1
                    elif btype == _SPB:
                        if not ifaces:
                            raise ValueError("simple packet block before any interface")
                        if bend - body < 4:
                            raise ValueError("simple packet block too short")
                        origlen = u32.unpack_from(buf, body)[0]
                        itf = ifaces[0]
                        caplen = min(origlen, bend - body - 4)
                        if itf.snaplen:
                            caplen = min(caplen, itf.snaplen)
                        if caplen < origlen:
                            self.snapped += 1
                        batch.append((last_ts, itf.linktype, buf[body + 4:body + 4 + caplen], origlen))
                        self.packets += 1
                    elif btype == _IDB:
                        if bend - body < 8:
                            raise ValueError("interface description block too short")
                        lt, _res, snap = struct.unpack_from(bo + "HHI", buf, body)
                        itf = _Interface(lt, snap)
                        _idb_options(itf, buf, body + 8, bend, bo)
                        ifaces.append(itf)
                        self.linktypes.add(lt)
                    elif btype == PCAPNG_SHB:
                        if bend - body < 16:
                            raise ValueError("section header block too short")
                        vmaj = struct.unpack_from(bo + "H", buf, body + 4)[0]
                        if vmaj != 1:
                            raise ValueError(f"unsupported pcapng version {vmaj}")
                        ifaces = []
                    else:
                        self.skipped_blocks += 1
                except ValueError as e:
                    err = CaptureError(f"corrupt pcapng block: {e}", base + pos, self.packets)
                    break
                pos = end
                if len(batch) >= batch_size:
                    yield batch
                    batch = []
            if err is not None or eof:
                break
            buf, pos, base, eof = self._refill(f, buf, pos, base, chunk_size)
        if batch:
            yield batch
        if err is not None:
            raise err
        if pos < len(buf):
            raise CaptureError(f"truncated pcapng file: cut in a block "
                               f"({len(buf) - pos} bytes left over)", base + pos, self.packets)


class RecordChunk:
    """Complete pcap records in ``buf``: ``offsets`` (numpy int64) of their
    16-byte record headers, in file order; ``u32`` the file's uint32 dtype
    (byte order).  ``fields()`` gives the per-record arrays.  ``buf`` is a
    view of the reader's buffer: valid until the reader goes on."""

    __slots__ = ("buf", "offsets", "linktype", "nano", "u32", "_fields", "room")

    def __init__(self, buf, offsets, linktype, nano, u32, room=None):
        self.buf = buf
        self.offsets = offsets
        self.linktype = linktype
        self.nano = nano
        self.u32 = u32
        self._fields = None
        # the buffer ``buf`` starts, at least SLACK bytes longer if it can
        self.room = buf if room is None else room

    def __len__(self) -> int:
        return len(self.offsets)

    def first_ts(self) -> int:
        sec, frac = struct.unpack_from(self.u32.str[0] + "II", self.buf, int(self.offsets[0]))
        return sec * 1_000_000_000 + (frac if self.nano else frac * 1000)

    def fields(self):
        """(ts_ns, caplen, origlen) int64 arrays (computed once)."""
        if self._fields is None:
            import numpy as np
            o = self.offsets
            bo = self.u32.str[0]
            n = len(self.buf)
            # two 8-byte reads per header: (sec, frac) and (caplen, origlen)
            v = np.ndarray((n - 7,), dtype=bo + "i8", buffer=self.buf, strides=(1,))
            a = v[o]
            b = v[o + 8]
            lo = 0xFFFFFFFF
            if bo == "<":
                sec, frac, cap, orig = a & lo, (a >> 32) & lo, b & lo, (b >> 32) & lo
            else:
                sec, frac, cap, orig = (a >> 32) & lo, a & lo, (b >> 32) & lo, b & lo
            ts = sec * 1_000_000_000
            ts += frac if self.nano else frac * 1000
            self._fields = (ts, cap, orig)
        return self._fields

    def frames(self, start: int = 0, stop: int | None = None) -> list:
        """The records ``start`` to ``stop`` as ``batches`` yields them:
        (ts_ns, linktype, data, origlen)."""
        ts, cap, orig = self.fields()
        buf = self.buf
        lt = self.linktype
        s = slice(start, stop)
        return [(t, lt, bytes(buf[o + 16:o + 16 + c]), g) for t, o, c, g in
                zip(ts[s].tolist(), self.offsets[s].tolist(), cap[s].tolist(),
                    orig[s].tolist())]


def _u32(view, idx, dtype):
    """uint32 (of ``dtype``'s byte order) at each byte offset of ``idx``."""
    import numpy as np
    n = len(view)
    if n < 4:
        return np.zeros(len(idx), np.uint32)
    v = np.ndarray((n - 3,), dtype=dtype, buffer=view, strides=(1,))
    return v[idx]


# The record walk.  Each record's place depends on the previous one's
# captured length, a chain a Python loop follows at ~0.5 us a record.  Instead
# the buffer is cut into segments; in each, the first position that looks
# like a record header (plausible lengths and fraction, a timestamp within a
# day of the first record's, and the same for the record it points to) is a
# guess, and all segments are walked at once with numpy, one record per step.
# The guesses are then proven: the walk of segment j, from a known record,
# must land exactly on segment j+1's guess.  If any does not (or anything
# else is odd), the whole buffer is walked again one record at a time: the
# offsets are always the exact chain from the first record.
_SEG = 1 << 13
_SEG_WINDOWS = 256                  # a segment is this many guess windows long
_MIN_LOCKSTEP = 1 << 18


def walk_records(buf: bytes, pos: int, u32, snaplen: int, nano: bool):
    """Offsets (int64 array) of the complete pcap records in ``buf`` from
    ``pos`` (a record header), the offset where the walk stopped (an
    incomplete record, or the end), and whether it stopped at a record whose
    captured length is above ``MAX_CAPLEN`` (corrupt)."""
    import numpy as np
    blen = len(buf)
    offs = None
    bo = u32.str[0]
    if blen - pos >= max(_MIN_LOCKSTEP, 2 * _SEG):
        offs = walk_lockstep(buf, pos, bo, snaplen, nano)
    if offs is None:
        offs = walk_chain(buf, pos, bo)
    view = np.frombuffer(buf, np.uint8)
    if len(offs) == 0:
        return offs, pos, blen - pos >= 16 and _u32(view, np.array([pos + 8]), u32)[0] > MAX_CAPLEN
    last = int(offs[-1])
    caplen = int(_u32(view, np.array([last + 8]), u32)[0])
    if last + 16 + caplen <= blen:
        return offs, last + 16 + caplen, False
    return offs[:-1], last, caplen > MAX_CAPLEN


def walk_chain(buf: bytes, pos: int, bo: str):
    """Record headers from ``pos`` whose header is complete (the last one's
    data may not be), one at a time; the loop runs in C: a map over the list
    it extends reads each captured length and appends the next offset."""
    import numpy as np
    from itertools import repeat, takewhile
    from operator import add, itemgetter
    blen = len(buf)
    if pos + 16 > blen:
        return np.zeros(0, np.int64)
    caplen_at = struct.Struct(bo + "8xI").unpack_from
    out = [pos]
    a = iter(out)
    b = iter(out)
    nxt = map(add, map(add, b, map(itemgetter(0), map(caplen_at, repeat(buf), a))), repeat(16))
    out.extend(takewhile((blen - 16).__ge__, nxt))
    return np.array(out, dtype=np.int64)


def walk_lockstep(buf: bytes, pos: int, bo: str, snaplen: int, nano: bool,
                  seg_min: int = _SEG, seg_windows: int = _SEG_WINDOWS):
    """The segment-parallel walk (see above): offsets of the record headers
    from ``pos`` whose header is complete, as ``walk_chain``; None when a
    guess is not proven.  A segment is ``seg_windows`` guess windows long,
    at least ``seg_min`` bytes."""
    import numpy as np
    blen = len(buf)
    u32 = np.dtype(bo + "u4")
    view = np.frombuffer(buf, np.uint8)
    w32 = np.ndarray((blen - 3,), dtype=u32, buffer=view, strides=(1,))
    capmax = min(snaplen, 0x40000) if snaplen else 0x40000
    fracmax = 1_000_000_000 if nano else 1_000_000
    sec0 = int(w32[pos])
    win = min(capmax, 2048) + 16
    seg = max(seg_min, seg_windows * win)
    k = (blen - pos) // seg
    lim = blen - 16                    # a header at or below lim is complete
    # guesses: the first plausible header in the first ``win`` bytes of each segment
    starts = pos + np.arange(1, k, dtype=np.int64) * seg
    q = (starts[:, None] + np.arange(win, dtype=np.int64)).ravel()
    q = q[q <= lim]
    # the cheap test first (captured length), the others on what passes it
    cap = w32[q + 8]
    m = cap <= capmax
    q = q[m]
    cap = cap[m]
    m = _plausible(w32, q, cap, fracmax, sec0)
    q = q[m]
    q2 = q + 16 + cap[m].astype(np.int64)
    m = q2 <= lim
    q = q[m]
    q2 = q2[m]
    cap2 = w32[q2 + 8]
    m = cap2 <= capmax
    m[m] = _plausible(w32, q2[m], cap2[m], fracmax, sec0)
    cand = q[m]
    if not len(cand):
        return None
    first = np.searchsorted(cand, starts)        # first plausible position per segment
    if (first >= len(cand)).any():
        return None
    guess = cand[first]
    if (guess >= starts + win).any():
        return None
    p = np.concatenate(([pos], guess))
    # every chain walks on until it is at or past its target (the next
    # segment's guess; the last one: past the end); what it visits beyond is
    # masked out below
    target = np.append(guess, lim + 1)
    steps = []
    cur = p
    w32c = w32[8:]                               # w32c[x]: the caplen of a header at x
    for i in range((2 * seg + win) // 16 + 2):
        steps.append(cur)
        cur = cur + 16 + w32c[np.minimum(cur, lim)]
        if i & 15 == 15 and (cur >= target).all():
            break
    else:
        return None
    grid = np.stack(steps)                       # step x chain
    below = grid < target
    # proof: each chain's first position at or past its target is the target
    n = below.sum(axis=0)
    if (n >= len(steps)).any():
        return None
    if (grid[n[:-1], np.arange(len(p) - 1)] != target[:-1]).any():
        return None
    return grid.T[below.T]


def _plausible(w32, q, cap, fracmax, sec0):
    """Record headers at ``q`` (captured lengths ``cap`` already checked):
    original length at least the captured one, fraction below a second,
    seconds within a day of the first record's."""
    sec = w32[q].astype("i8")
    return (w32[q + 12] >= cap) & (w32[q + 4] < fracmax) & (abs(sec - sec0) <= 86400)


def _idb_options(itf: _Interface, buf: bytes, p: int, end: int, bo: str) -> None:
    """Walk the options of an IDB for if_tsresol (9) and if_tsoffset (14)."""
    hdr = struct.Struct(bo + "HH")
    while p + 4 <= end:
        code, length = hdr.unpack_from(buf, p)
        p += 4
        if code == 0:
            break
        if p + length > end:
            raise ValueError("interface option beyond the block")
        if code == 9 and length >= 1:
            itf.set_tsresol(buf[p])
        elif code == 14 and length >= 8:
            itf.offset_ns = struct.unpack_from(bo + "q", buf, p)[0] * 1_000_000_000
        p += (length + 3) & ~3


def _magic(f) -> tuple[bytes, int]:
    """A capture file's first 4 bytes and their little-endian value."""
    head = _read(f, 4)
    if len(head) < 4:
        raise CaptureError("not a capture file: shorter than a file header"
                           if head else "empty capture file")
    return head, struct.unpack("<I", head)[0]


def _read(f, n: int) -> bytes:
    try:
        data = f.read(n)
    except OSError as e:
        raise CaptureError(f"cannot read capture: {e}")
    return bytes(data) if data is not None else b""


def read_packets(source: Source, batch_size: int = 4096) -> Iterator[list]:
    """Shorthand for ``CaptureReader(source, batch_size).batches()``."""
    return CaptureReader(source, batch_size).batches()
