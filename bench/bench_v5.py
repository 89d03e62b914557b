"""Encode speed of the flow-tools view, the NetFlow v5 encoder and the CSV/syslog
formatting (no sockets): 100k SNAT connections = 200k Flow records = 300k
flow-tools records.  Run: python bench/bench_v5.py"""
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from nfflowd import flowtools  # noqa: E402
from nfflowd.netflow5 import V5Encoder  # noqa: E402
from nfflowd.record import ORIGINAL, REPLY, Flow, FlowBatch  # noqa: E402
from nfflowd.io.syslog import SyslogFormatter  # noqa: E402

N = 100_000
boot = 1_700_000_000_000
flows = []
pub, srv = bytes([192, 76, 7, 154]), bytes([74, 125, 6, 225])
for i in range(N):
    a = (0x0A000000 + i % 5000).to_bytes(4, "big")
    sp = 1024 + i % 60000
    flows.append(Flow(4, 6, a, srv, sp, 80, pub, srv, sp, 80, 10, 1000, boot + 1000, boot + 2000, ORIGINAL))
    flows.append(Flow(4, 6, srv, pub, 80, sp, srv, a, 80, sp, 12, 20000, boot + 1000, boot + 2000, REPLY))
now = (boot + 5000) * 1_000_000
enc = V5Encoder()
fmt = SyslogFormatter(pid=1)
best = {}
for _ in range(5):
    t0 = time.perf_counter()
    recs = flowtools.expand(FlowBatch.from_flows(flows), now, boot, "172.16.1.1")
    t1 = time.perf_counter()
    dgs = enc.encode(recs)
    t2 = time.perf_counter()
    lines = flowtools.csv_lines(recs)
    t3 = time.perf_counter()
    msgs = fmt.format_many(lines, now / 1e9)
    t4 = time.perf_counter()
    for k, v in (("expand", t1 - t0), ("v5 encode", t2 - t1), ("csv lines", t3 - t2),
                 ("syslog format", t4 - t3)):
        best[k] = min(best.get(k, 1e9), v)
print(f"{N} connections, {len(flows)} flows, {len(recs)} records, {len(dgs)} v5 datagrams")
for k, v in best.items():
    print(f"  {k:14s} {v * 1000:7.1f} ms  = {N / v / 1000:6.0f}k connections/s "
          f"({v / len(recs) * 1e9:.0f} ns/record)")
v5 = best["expand"] + best["v5 encode"]
print(f"  expand+v5      {v5 * 1000:7.1f} ms  = {N / v5 / 1000:6.0f}k connections/s")
tot = sum(best.values())
print(f"  all            {tot * 1000:7.1f} ms  = {N / tot / 1000:6.0f}k connections/s")
