"""Memory of the correlator's live cache per tracked connection.

    python bench/bench_cache_memory.py [--connections N]

Synthetic NEW events (IPv4 SNAT, then IPv6) are fed through
Correlator.handle_batch in batches, as the daemon does; the events are
dropped after each batch, so what remains allocated is the cache (the dict,
its int keys, one packed bytes entry per connection).  tracemalloc counts
every allocation.  Also shown: the same after every connection has been
exported once by the active timeout (its entry then carries the counters
exported so far, and its id is in the sorted array of such ids that DESTROY
blocks look up).  Target: 200 bytes or fewer per connection.

What the synthetic connections are, and so which entry layout they measure
(nfflowd/ctcache.py): IPv4 SNAT; IPv6 NAT66 with source
translation only (the reply source is the original destination, so the
entry leaves it out, as for every IPv6 connection without destination NAT);
counters exported by the active timeout below 2**32 (a 32-bit base).  An
IPv6 entry with destination NAT, or with a counter past 2**32, is 16 or 32
bytes longer than the figure shown.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nfflowd.conntrack import EV_DUMP, EV_NEW, CtEvent, CtTuple  # noqa: E402
from nfflowd import ctcache  # noqa: E402
from nfflowd.correlate import Correlator  # noqa: E402

BATCH = 10_000


def events(n, family, kind=EV_NEW, counters=(0, 0, 0, 0)):
    if family == 4:
        lan, wan, fw = b"\xc6\x33\x64\x02", b"\xcb\x00\x71\x02", b"\xcb\x00\x71\x01"
    else:
        lan = bytes.fromhex("20010db8000100000000000000000002")
        wan = bytes.fromhex("20010db8000200000000000000000002")
        fw = bytes.fromhex("20010db8000200000000000000000001")
    for i in range(n):
        sport, dport = 1024 + i % 60000, 1 + i // 60000
        # fresh bytes per event, as the decoder makes them
        yield CtEvent(kind, family, 1_000_000 + i, 0,
                      CtTuple(bytes(lan), bytes(wan), 17, sport, dport),
                      CtTuple(bytes(wan), bytes(fw), 17, dport, sport), *counters, 0, 0)


def measure(n, family, active):
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    corr = Correlator(kernel_timestamps=True)
    out: list = []
    batch = []
    for ev in events(n, family):
        batch.append(ev)
        if len(batch) == BATCH:
            corr.handle_batch(batch, 1, out)
            batch = []
    corr.handle_batch(batch, 1, out)
    del batch, ev
    if active:
        # the active timeout, in slices of the table so as not to hold a
        # dump of N events in memory while measuring
        # (what Correlator.active_export leaves in each entry: the counters
        # exported, and the time)
        cache = corr.cache
        for ev in events(n, family, EV_DUMP, (3, 300, 2, 200)):
            entry = cache.entries[ev[2]]
            head = ctcache.unpack(entry)[1]
            cache.entries[ev[2]] = ctcache.with_base(entry, head, *ev[6:10], 2)
        del ev, entry, cache
        corr.cache.note_early()     # as the sync ends: the ids of entries with a base
    gc.collect()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert corr.cached == n
    return used / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--connections", type=int, default=1_000_000)
    n = ap.parse_args().connections
    for family in (4, 6):
        for active in (False, True):
            per = measure(n, family, active)
            what = "after an active-timeout export" if active else "as NEW left it"
            print(f"IPv{family} {n:,} connections, {what:31s} {per:6.1f} bytes/connection")
    return 0


if __name__ == "__main__":
    sys.exit(main())
