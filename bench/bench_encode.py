"""Encode cost of one export round of n flows, for small and large rounds.

    python bench/bench_encode.py [--columns] [--stages v5,v9,ipfix]

A round is n IPv4 flows made as ``Flow`` tuples (the object path's rounds,
what a daemon's steady stream exports), handed to the encoders as one
``FlowBatch``: v5 (the flow-tools view, then the v5 records), NetFlow v9 or
IPFIX.  ``--columns`` turns each round into columns first (``as_columns``)
and encodes those, as a single columnar path would.  CPU per round
(process_time), best of 3 passes; n = 1, 2, 10, 100, 1000.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE.parent / "tests"))

from nfflowd import flowtools  # noqa: E402
from nfflowd.ipfix import IpfixEncoder  # noqa: E402
from nfflowd.netflow5 import V5Encoder  # noqa: E402
from nfflowd.netflow9 import NetflowV9Encoder  # noqa: E402
from nfflowd.record import FlowBatch  # noqa: E402
from test_netflow9 import BOOT, T0, many_flows  # noqa: E402

SIZES = (1, 2, 10, 100, 1000)


def round_of(n: int) -> list:
    """n IPv4 flows, translated (two flow-tools records each)."""
    return [f for f in many_flows(2 * n) if f.family == 4][:n]


def cost(n: int, stage: str, columns: bool) -> float:
    """CPU us per round of n flows."""
    flows = round_of(n)
    reps = max(20, 20000 // n)
    v5, v9, ipfix = V5Encoder(), NetflowV9Encoder(), IpfixEncoder()
    now_ns = T0 * 1_000_000
    t0 = time.process_time()
    for _ in range(reps):
        batch = FlowBatch.from_flows(flows)
        if columns:
            batch = batch.as_columns()
        if stage == "v5":
            v5.encode(flowtools.expand(batch, now_ns, BOOT))
        elif stage == "v9":
            v9.encode(batch, [], T0, BOOT)
        else:
            ipfix.encode(batch, [], T0)
    return (time.process_time() - t0) / reps * 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--columns", action="store_true", help="encode the rounds as columns")
    ap.add_argument("--stages", default="v5,v9,ipfix")
    args = ap.parse_args()
    form = "columns" if args.columns else "tuples"
    for stage in args.stages.split(","):
        best = [min(cost(n, stage, args.columns) for _ in range(3)) for n in SIZES]
        print(f"{form:8} {stage:6}", "  ".join(f"n={n}: {t:7.1f} us" for n, t in zip(SIZES, best)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
