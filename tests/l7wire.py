"""Test helpers for the L7 parsers: the payloads of a capture (read with
nfflowd's reader), frames built here written as a pcap, tshark's fields of
each frame."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings, strategies as st

from nfflowd.io.pcapfile import read_packets
from nfflowd.l7.inspect import locate

PCAPS = Path(__file__).parent / "data" / "pcaps"
A4, B4 = bytes([198, 51, 100, 1]), bytes([203, 0, 113, 9])
MAC = b"\x02\0\0\0\0\x01\x02\0\0\0\0\x02"

needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def payloads(path) -> list:
    """(frame number, proto, sport, dport, payload) of each TCP/UDP frame
    with payload, in capture order."""
    out = []
    n = 0
    for batch in read_packets(str(path)):
        for _ts, lt, data, orig in batch:
            n += 1
            loc = locate(lt, data, orig)
            if loc is None:
                continue
            _key, proto, sp, dp, a, b, _cut = loc
            if b > a:
                out.append((n, proto, sp, dp, bytes(data[a:b])))
    return out


def frame(proto: int, payload: bytes, sp: int = 40000, dp: int = 443, seq: int = 1,
          flags: int = 0x18) -> bytes:
    """An Ethernet/IPv4 frame from 198.51.100.1 to 203.0.113.9."""
    if proto == 6:
        l4 = struct.pack("!HHIIBBHHH", sp, dp, seq, 1, 5 << 4, flags, 1024, 0, 0) + payload
    else:
        l4 = struct.pack("!HHHH", sp, dp, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), 7, 0x4000, 64, proto, 0, A4, B4)
    s = sum(struct.unpack("!10H", ip))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    ip = ip[:10] + struct.pack("!H", ~s & 0xFFFF) + ip[12:]
    return MAC + b"\x08\x00" + ip + l4


def write_pcap(path, frames_) -> Path:
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for i, f in enumerate(frames_):
        out += struct.pack("<IIII", 1_700_000_000 + i, 0, len(f), len(f)) + f
    Path(path).write_bytes(out)
    return Path(path)


def tshark(path, fields: list, *extra) -> list[dict]:
    """Per frame, {field: [values]} (tshark's -T fields, all occurrences)."""
    cmd = ["tshark", "-n", "-r", str(path), *extra, "-T", "fields", "-E", "separator=\t",
           "-E", "occurrence=a", "-E", "aggregator=|", "-e", "frame.number"]
    for f in fields:
        cmd += ["-e", f]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=True)
    rows = []
    for line in res.stdout.splitlines():
        cols = line.split("\t")
        row = {"frame": int(cols[0])}
        for f, v in zip(fields, cols[1:]):
            row[f] = [x for x in v.split("|") if x != ""]
        rows.append(row)
    return rows


FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))


def _mutate(seed: bytes, edits, cut) -> bytes:
    b = bytearray(seed)
    for at, v in edits:
        b[at % len(b)] = v
    return bytes(b[:cut])


def mutated(seeds, span: int):
    """A strategy: one of ``seeds`` with up to 8 bytes changed, cut to a
    length up to ``span`` (its whole length as often as not)."""
    return st.builds(_mutate, st.sampled_from(seeds),
                     st.lists(st.tuples(st.integers(0, span), st.integers(0, 255)), max_size=8),
                     st.one_of(st.integers(0, span), st.just(1 << 30)))
