"""What the options records cost an export: CPU and datagrams, on and off.

    python bench/bench_options.py [--links N] [--passes P]

One encoder per version (NetFlow v9, IPFIX) encodes 5 rounds of 100,000
IPv4 flows (a burst) with the default template refresh (every 20
datagrams), without options and with them (``options.ExporterOptions``:
interface names of N links, sampling, statistics), the two alternating in
each pass; best CPU time (process_time) of the passes, and the datagrams
each made.
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from nfflowd.ipfix import IpfixEncoder  # noqa: E402
from nfflowd.netflow9 import NetflowV9Encoder  # noqa: E402
from nfflowd.options import ExporterOptions  # noqa: E402
from nfflowd.record import END_OF_FLOW, ORIGINAL, Flow, FlowBatch  # noqa: E402

T0 = 1_700_000_000_000
N, ROUNDS = 100_000, 5


def batch() -> FlowBatch:
    ip = ipaddress.ip_address
    src, dst, nat = ip("198.51.100.7").packed, ip("203.0.113.9").packed, ip("203.0.113.1").packed
    return FlowBatch.from_flows([
        Flow(4, 6, src, dst, 1024 + i % 60000, 80, nat, dst, 1024 + i % 60000, 80, 5, 500,
             T0 - 2000, T0 - 1000, ORIGINAL, END_OF_FLOW, in_if=2, out_if=3)
        for i in range(N)])


def run(version: int, b: FlowBatch, links: dict | None) -> tuple[float, int]:
    """(CPU seconds, datagrams) of ROUNDS rounds of ``b``."""
    enc = (NetflowV9Encoder if version == 9 else IpfixEncoder)(7)
    if links is not None:
        opts = ExporterOptions(version, 7, stats=lambda: (1, 2, 3, 4))
        opts.set_links(links)
        enc.attach_options(opts)
    extra = (T0 - 3_600_000,) if version == 9 else ()
    t = time.process_time()
    n = 0
    for k in range(ROUNDS):
        n += len(enc.encode(b, [], T0 + k, *extra))
    return time.process_time() - t, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--links", type=int, default=8)
    ap.add_argument("--passes", type=int, default=5)
    a = ap.parse_args()
    b = batch()
    links = {i: (f"eth{i}", f"link {i}") for i in range(1, a.links + 1)}
    for version in (9, 10):
        off, on = [], []
        for _ in range(a.passes):
            off.append(run(version, b, None))
            on.append(run(version, b, links))
        t_off, t_on = min(x[0] for x in off), min(x[0] for x in on)
        print(f"v{version}: {ROUNDS * N} records, {a.links} links: CPU {t_off * 1e3:.0f} ms "
              f"without options, {t_on * 1e3:.0f} ms with ({t_on / t_off:.3f}x); "
              f"datagrams {off[0][1]} and {on[0][1]} (+{on[0][1] / off[0][1] - 1:.1%})")


if __name__ == "__main__":
    main()
