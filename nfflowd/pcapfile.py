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

from .errors import SourceError

__all__ = ["CaptureError", "CaptureReader", "read_packets",
           "PCAP_MAGIC_US", "PCAP_MAGIC_NS", "PCAPNG_SHB"]


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

MAX_CAPLEN = 256 * 1024 * 1024   # wiretap's limit is lower; anything above is corrupt
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

    def batches(self) -> Iterator[list]:
        f, close = self._open()
        try:
            head = _read(f, 4)
            if len(head) < 4:
                raise CaptureError("not a capture file: shorter than a file header"
                                   if head else "empty capture file")
            magic_le = struct.unpack("<I", head)[0]
            if magic_le == PCAPNG_SHB:
                self.format = "pcapng"
                yield from self._pcapng(f, head)
            elif magic_le in (PCAP_MAGIC_US, PCAP_MAGIC_NS) or \
                    struct.unpack(">I", head)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
                self.format = "pcap"
                yield from self._pcap(f, head)
            else:
                raise CaptureError(f"not a pcap or pcapng file: bad magic number 0x{head.hex()}")
        finally:
            if close:
                f.close()

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
        rest = _read(f, 20)
        if len(rest) < 20:
            raise CaptureError("truncated pcap file header", len(head) + len(rest))
        hdr = head + rest
        if struct.unpack("<I", head)[0] in (PCAP_MAGIC_US, PCAP_MAGIC_NS):
            bo = "<"
        else:
            bo = ">"
        magic, vmaj, vmin, _tz, _sig, snaplen, network = struct.unpack(bo + "IHHiIII", hdr)
        if vmaj != 2:
            raise CaptureError(f"unsupported pcap version {vmaj}.{vmin}", 4)
        tsmul = 1 if magic == PCAP_MAGIC_NS else 1000
        linktype = network & 0xFFFF
        self.linktypes.add(linktype)
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
        nano = tsmul == 1
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
            left = len(buf) - pos
            what = "record header" if left < 16 else "packet data"
            raise CaptureError(f"truncated pcap file: cut in a {what} "
                               f"({left} bytes left over)", base + pos, self.packets)

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


def _read(f, n: int) -> bytes:
    try:
        data = f.read(n)
    except OSError as e:
        raise CaptureError(f"cannot read capture: {e}")
    return bytes(data) if data is not None else b""


def read_packets(source: Source, batch_size: int = 4096) -> Iterator[list]:
    """Shorthand for ``CaptureReader(source, batch_size).batches()``."""
    return CaptureReader(source, batch_size).batches()
