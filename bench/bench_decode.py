"""Decode speed of nfflowd.conntrack.decode on one core (no sockets).

Reads bench/data/destroy_replay.bin (made by bench/make_replay.py from the real
DESTROY messages in tests/data; made here if missing), groups the datagrams
into buffers of --batch datagrams as ConntrackSocket.recv fills them (a
batch of datagrams back to back in one buffer, decoded in one call), and times decode() over all of them: best of --repeat runs (the
layout cache is cleared before each run).  Also times the plain walker (the
layout cache off) on the first 20k messages, for comparison.

    python bench/bench_decode.py [--batch 1024] [--repeat 5]
"""
import argparse
import os
import struct
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
from nfflowd import conntrack  # noqa: E402

REPLAY = os.path.join(HERE, "data", "destroy_replay.bin")


def load_batches(path, batch):
    with open(path, "rb") as f:
        data = f.read()
    batches, cur, count, off = [], bytearray(), 0, 0
    while off + 4 <= len(data):
        (n,) = struct.unpack_from("<I", data, off)
        cur += data[off + 4:off + 4 + n]
        cur += b"\0" * (-n % 4)
        off += 4 + n
        count += 1
        if count % batch == 0:
            batches.append(bytes(cur))
            cur = bytearray()
    if cur:
        batches.append(bytes(cur))
    return batches, count


def run(fn, batches, repeat):
    best = float("inf")
    events = 0
    for _ in range(repeat):
        conntrack.clear_layout_cache()
        t0 = time.perf_counter()
        events = 0
        for b in batches:
            events += len(fn(memoryview(b)).events)
        best = min(best, time.perf_counter() - t0)
    return events, best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--file", default=REPLAY)
    a = ap.parse_args()
    if not os.path.exists(a.file):
        subprocess.run([sys.executable, os.path.join(HERE, "make_replay.py"), "-o", a.file], check=True)
    batches, count = load_batches(a.file, a.batch)
    print(f"Python {sys.version.split()[0]} ({sys.executable}), batches of {a.batch} datagrams")
    events, secs = run(conntrack.decode, batches, a.repeat)
    assert events == count, (events, count)
    print(f"decode (layout cache)       {count} messages in {secs:.3f} s: {count / secs:,.0f} msgs/s")
    # the plain walker is ~10x slower: time it on a part only
    part = batches[:max(1, 20_000 // a.batch)]
    n = sum(len(conntrack.decode_walk(b).events) for b in part)
    events, secs = run(conntrack.decode_walk, part, 1)
    print(f"decode_walk (plain walker)  {n} messages in {secs:.3f} s: {n / secs:,.0f} msgs/s")


if __name__ == "__main__":
    main()
