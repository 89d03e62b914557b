"""The meter's memory is bounded by --max-flows (#15 item 13): ``nfflowd
meter -r`` on captures of 100k and 400k packets, each its own flow, with
--max-flows 1000, exporting to a NetFlow v5 collector and to an IPFIX biflow
collector (whose pairer holds records back): the peak resident size of the
child does not grow with the capture.  Two sizes compared in one run, not a
timing; before the bound, the 400k run peaked some 300 MB above the 100k one
(every record of a 32 MB chunk held at once, and every record in the
pairer for its 30 s hold)."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

# runs the command in its arguments; prints its peak resident size (KiB)
_PEAK = r'''
import resource, subprocess, sys
r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                   text=True, timeout=300)
sys.stderr.write(r.stderr)
print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
'''


def unique_flows(path: Path, n: int) -> None:
    """``n`` 60-byte Ethernet/IPv4/UDP frames 10 us apart, each its own
    flow (198.51.100.1 to 203.0.113.x, source port by packet)."""
    i = np.arange(n, dtype=np.int64)
    rec = np.zeros((n, 16 + 60), np.uint8)
    us = i * 10
    hdr = np.zeros((n, 4), "<u4")
    hdr[:, 0] = 1_700_000_000 + us // 1_000_000
    hdr[:, 1] = us % 1_000_000
    hdr[:, 2] = hdr[:, 3] = 60
    rec[:, :16] = hdr.view(np.uint8).reshape(n, 16)
    f = rec[:, 16:]
    f[:, 12], f[:, 14], f[:, 17], f[:, 22], f[:, 23] = 8, 0x45, 46, 64, 17
    f[:, 26:30] = (198, 51, 100, 1)
    f[:, 30:33] = (203, 0, 113)
    f[:, 33] = (i >> 16) & 0xFF
    f[:, 34], f[:, 35] = (i >> 8) & 0xFF, i & 0xFF
    f[:, 37], f[:, 39] = 53, 26
    with open(path, "wb") as out:
        out.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
        out.write(rec.tobytes())


def peak_kib(conf: Path, capture: Path) -> tuple[int, str]:
    cmd = [sys.executable, "-c", _PEAK, sys.executable, "-m", "nfflowd.cli", "-c", str(conf),
           "meter", "-r", str(capture), "--max-flows", "1000"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=330,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    rc, kib = r.stdout.split()
    assert int(rc) == 0, r.stderr
    return int(kib), r.stderr


def test_peak_memory_does_not_grow_with_the_capture(tmp_path):
    # collectors: sockets of ours that read nothing (the kernel drops the overflow)
    v5, v10 = (socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(2))
    try:
        for s in (v5, v10):
            s.bind(("127.0.0.1", 0))
        conf = tmp_path / "nfflowd.yaml"
        conf.write_text("export:\n  collectors:\n"
                        f"    - {{host: 127.0.0.1, port: {v5.getsockname()[1]}, version: 5}}\n"
                        f"    - {{host: 127.0.0.1, port: {v10.getsockname()[1]}, version: 10, "
                        "biflow: true}\nsyslog:\n  enabled: false\n")
        peaks = {}
        for n in (100_000, 400_000):
            cap = tmp_path / f"{n}.pcap"
            unique_flows(cap, n)
            peaks[n], err = peak_kib(conf, cap)
            cap.unlink()
            assert f"{n} IP packets" in err and f"{n} flows exported" in err
            assert f"{n - 1000} flows ended early: flow table full" in err
            # the pairer's bound: all but the last table's worth went alone early
            assert f"0 pairs, {n} records alone ({n - 1000} of them before their hold" in err
    finally:
        v5.close()
        v10.close()
    small, big = peaks[100_000], peaks[400_000]
    assert big - small < 16 * 1024, f"peak {small} KiB at 100k packets, {big} KiB at 400k"
