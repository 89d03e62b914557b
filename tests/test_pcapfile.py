"""Capture file reader: pcap (us/ns, both byte orders), pcapng, errors, fuzz.

Files are built here byte by byte; the sample captures are read and checked
against tshark's packet count where it is installed."""

from __future__ import annotations

import glob
import io
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfflowd.errors import NfflowdError, SourceError
from nfflowd.io.pcapfile import CaptureError, CaptureReader, read_packets

PCAPS = Path(__file__).resolve().parent / "data" / "pcaps"

PKTS = [(1_600_000_000, 123456, b"\x01" * 60, 60),
        (1_600_000_001, 999999, b"\x02" * 20, 1500),      # snaplen-cut
        (1_600_000_002, 0, b"", 0)]


def pcap(packets=PKTS, bo="<", nano=False, linktype=1, version=(2, 4)):
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = struct.pack(bo + "IHHiIII", magic, version[0], version[1], 0, 0, 65535, linktype)
    for sec, frac, data, orig in packets:
        out += struct.pack(bo + "IIII", sec, frac, len(data), orig) + data
    return out


def block(btype, body, bo="<"):
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack(bo + "II", btype, n) + body + struct.pack(bo + "I", n)


def shb(bo="<"):
    return block(0x0A0D0D0A, struct.pack(bo + "IHHq", 0x1A2B3C4D, 1, 0, -1), bo)


def idb(linktype=1, snaplen=0, tsresol=None, tsoffset=None, bo="<"):
    opts = b""
    if tsresol is not None:
        opts += struct.pack(bo + "HH", 9, 1) + bytes([tsresol]) + b"\0\0\0"
    if tsoffset is not None:
        opts += struct.pack(bo + "HHq", 14, 8, tsoffset)
    if opts:
        opts += struct.pack(bo + "HH", 0, 0)
    return block(1, struct.pack(bo + "HHI", linktype, 0, snaplen) + opts, bo)


def epb(ifid, ts, data, orig=None, bo="<"):
    return block(6, struct.pack(bo + "IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF, len(data),
                                len(data) if orig is None else orig) + data, bo)


def spb(data, orig=None, bo="<"):
    return block(3, struct.pack(bo + "I", len(data) if orig is None else orig) + data, bo)


def read_all(src, **kw):
    return [p for batch in CaptureReader(src, **kw).batches() for p in batch]


@pytest.mark.parametrize("bo", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_pcap_both_byte_orders_and_resolutions(bo, nano):
    r = CaptureReader(pcap(bo=bo, nano=nano))
    got = [p for b in r.batches() for p in b]
    mul = 1 if nano else 1000
    assert got == [(s * 10 ** 9 + f * mul, 1, d, o) for s, f, d, o in PKTS]
    assert r.format == "pcap" and r.packets == 3 and r.snapped == 1


def test_batches_and_small_chunks_give_the_same_packets():
    many = [(i, i, bytes([i % 256]) * (i % 97), i % 97) for i in range(1000)]
    data = pcap(many)
    whole = read_all(data)
    assert len(whole) == 1000
    batches = list(CaptureReader(data, batch_size=7, chunk_size=64).batches())
    assert max(len(b) for b in batches) == 7
    assert [p for b in batches for p in b] == whole


def test_linktype_upper_bits_ignored():
    got = read_all(pcap(linktype=0x1000_0071))      # FCS bits + SLL
    assert {p[1] for p in got} == {113}


def test_file_object_path_and_bytes(tmp_path):
    data = pcap()
    f = tmp_path / "x.pcap"
    f.write_bytes(data)
    assert read_all(data) == read_all(io.BytesIO(data)) == read_all(f) == read_all(str(f))
    assert [p for b in read_packets(data) for p in b] == read_all(data)


@pytest.mark.parametrize("bo", ["<", ">"])
def test_pcapng_interfaces_resolutions_and_blocks(bo):
    data = (shb(bo) + idb(1, bo=bo)                       # microseconds
            + idb(113, tsresol=9, tsoffset=10, bo=bo)     # nanoseconds, +10 s
            + idb(101, tsresol=0x80 | 10, bo=bo)          # 2^-10 s
            + block(5, b"stats", bo)                      # skipped
            + epb(0, 1_500_000, b"a" * 5, bo=bo)
            + epb(1, 7, b"b" * 6, orig=100, bo=bo)
            + epb(2, 1024 * 3, b"c", bo=bo))
    r = CaptureReader(data)
    got = read_all(data)
    assert got == [(1_500_000_000, 1, b"a" * 5, 5), (10 * 10 ** 9 + 7, 113, b"b" * 6, 100),
                   (3 * 10 ** 9, 101, b"c", 1)]
    list(r.batches())
    assert r.format == "pcapng" and r.snapped == 1 and r.skipped_blocks == 1
    assert r.linktypes == {1, 113, 101}


def test_pcapng_simple_packet_block_and_new_section():
    data = (shb() + idb(1, snaplen=4) + epb(0, 2_000_000, b"x") + spb(b"abcdefgh")
            + shb(">") + idb(101, bo=">") + epb(0, 5, b"y", bo=">"))
    got = read_all(data)
    # SPB: no timestamp of its own (the last one), cut to the snaplen
    assert got == [(2 * 10 ** 9, 1, b"x", 1), (2 * 10 ** 9, 1, b"abcd", 8), (5000, 101, b"y", 1)]


def test_sample_pcapng_files():
    for name, n in (("mqtt.pcap", 24), ("vlan.pcap", 6)):
        r = CaptureReader(PCAPS / name)
        assert len([p for b in r.batches() for p in b]) == n and r.format == "pcapng"


@pytest.mark.skipif(not shutil.which("capinfos"), reason="capinfos needed")
def test_sample_counts_match_capinfos():
    for f in sorted(glob.glob(str(PCAPS / "*.pcap"))):
        out = subprocess.run(["capinfos", "-c", "-M", f], capture_output=True, text=True).stdout
        n = int(out.split("Number of packets:")[1].split()[0])
        assert len(read_all(f)) == n, f


# -- errors: every complete packet first, then CaptureError -----------------

def collect(src):
    got = []
    with pytest.raises(CaptureError) as ei:
        for batch in CaptureReader(src, batch_size=2).batches():
            got.extend(batch)
    return got, ei.value


def test_capture_error_is_a_nfflowd_error():
    assert issubclass(CaptureError, SourceError) and issubclass(CaptureError, NfflowdError)


@pytest.mark.parametrize("data,msg", [
    (b"", "empty capture file"),
    (b"\xd4\xc3", "shorter than a file header"),
    (b"GIF89a" + b"\0" * 40, "bad magic number 0x47494638"),
    (pcap()[:20], "truncated pcap file header"),
    (pcap(version=(3, 0)), "unsupported pcap version 3.0"),
    (b"\x0a\x0d\x0d\x0a" + b"\0" * 20, "bad byte-order magic"),
])
def test_bad_headers(data, msg):
    got, err = collect(data)
    assert got == [] and msg in str(err)


def test_truncated_in_record_header_and_in_data():
    data = pcap()
    full = read_all(data)
    cut_hdr = len(pcap(PKTS[:2])) + 5
    got, err = collect(data[:cut_hdr])
    assert got == full[:2] and "cut in a record header" in str(err) and err.packets == 2
    got, err = collect(data[:24 + 16 + 30])
    assert got == [] and "cut in a packet data" in str(err) and err.offset == 24


def test_corrupt_pcapng_blocks():
    good = shb() + idb() + epb(0, 1, b"a")
    got, err = collect(good + epb(3, 1, b"b"))
    assert got == [(1000, 1, b"a", 1)] and "undeclared interface 3" in str(err)
    bad = bytearray(epb(0, 1, b"b"))
    bad[-4] ^= 0xFF
    got, err = collect(good + bytes(bad))
    assert len(got) == 1 and "trailing length" in str(err)
    got, err = collect(good + struct.pack("<II", 6, 13) + b"\0" * 8)
    assert len(got) == 1 and "length 13" in str(err)
    got, err = collect((good + epb(0, 2, b"b" * 40))[:-9])
    assert len(got) == 1 and "truncated pcapng file" in str(err)
    got, err = collect(idb() + epb(0, 1, b"a"))
    assert got == [] and "bad magic" in str(err)


# -- fuzz: nothing but CaptureError, whatever the bytes ---------------------

def _drain(data, batch_size=3, chunk_size=64):
    n = 0
    try:
        for batch in CaptureReader(data, batch_size=batch_size, chunk_size=chunk_size).batches():
            for ts, lt, d, orig in batch:
                assert isinstance(ts, int) and isinstance(lt, int)
                assert isinstance(d, bytes) and isinstance(orig, int)
                n += 1
    except CaptureError:
        pass
    return n


SEEDS = [pcap(), pcap(bo=">", nano=True),
         shb() + idb(1, tsresol=9, tsoffset=3) + epb(0, 5, b"abc") + spb(b"xyz") + epb(0, 9, b"q")]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(SEEDS), st.lists(st.tuples(st.integers(0, 200), st.integers(0, 255)),
                                        max_size=6), st.integers(0, 220))
def test_fuzz_mutated_files(seed, flips, cut):
    data = bytearray(seed)
    for pos, val in flips:
        if pos < len(data):
            data[pos] = val
    _drain(bytes(data[:cut]))
    _drain(bytes(data), batch_size=1, chunk_size=4096)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([b"", pcap()[:24], SEEDS[2][:28]]))
def test_fuzz_random_bytes(tail, head):
    _drain(head + tail)


def test_the_sample_captures_ship_with_the_repository():
    """The capture tests parametrize over tests/data/pcaps: an empty or missing
    folder would make them pass by collecting nothing.  A fresh clone has them
    all, with their licence."""
    names = sorted(p.name for p in PCAPS.glob("*.pcap"))
    assert len(names) == 15 and "vlan.pcap" in names and "http.pcap" in names
    assert (PCAPS / "LICENSE").read_text().count("BSD 3-Clause") == 1
