"""bench/meter_shapes.py, the generated captures of the meter's benchmark:
each shape's file is a capture nfflowd meters whole (every frame an IP
packet, no header cut), with the flows the shape promises, and the same
arguments give the same bytes."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from nfflowd.app.meters import meter_file
from nfflowd.meter import FlowTable

spec = importlib.util.spec_from_file_location(
    "meter_shapes", Path(__file__).resolve().parents[1] / "bench" / "meter_shapes.py")
shapes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(shapes)

N = 4000


def meter(path):
    got = []
    s = meter_file(path, FlowTable(), sink=lambda b: got.extend(b.flows()))
    assert s.error is None and not s.skipped and not s.truncated and not s.length_mismatch
    assert s.frames == s.ip_packets
    return s, got


@pytest.mark.parametrize("name", sorted(shapes.SHAPES))
def test_shape_meters_whole(tmp_path, name):
    path = shapes.capture(name, N, data=tmp_path)
    s, flows = meter(path)
    n = {"pareto4": 4 * N, "gaps": None}.get(name, N)
    if n is not None:
        assert s.frames == n
    keys = {(f.src, f.dst, f.sport, f.dport, f.proto) for f in flows}
    if name == "scan":
        assert len(keys) == N                       # one packet per flow
    elif name in ("pareto", "pareto4", "ipv6", "vlan"):
        assert len(keys) == 2 * (N // 20)           # both directions of every conversation
    if name == "ipv6":
        v6 = sum(f.family == 6 for f in flows)
        assert len(flows) // 5 < v6 < len(flows) // 2
    if name == "gaps":
        assert 1 in s.end_reasons and s.flows_exported > len(keys)   # idle ends between bursts
    assert path.read_bytes() == shapes.capture(name, N, data=tmp_path / "again").read_bytes()


def test_vlan_frames_are_tagged(tmp_path):
    data = shapes.capture("vlan", 200, data=tmp_path).read_bytes()
    assert data[24 + 16 + 12:24 + 16 + 14] == b"\x81\x00"
