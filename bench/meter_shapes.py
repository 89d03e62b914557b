"""Generated captures of several shapes, for the pcap meter's benchmarks and tests.

One function per shape returns the packets as columns (numpy arrays, one
row a packet, see ``Packets``); ``write_pcap`` writes them as a classic
pcap file (Ethernet, microsecond timestamps, frames cut to a snaplen) and
``capture(shape, packets)`` does both once per parameter set, cached under
bench/data/ (gitignored).  Seeded: the same arguments give the same file.

Shapes (``SHAPES``; ``packets`` is the capture's length):

- ``pareto``: the issue's case: 1M packets over 50 s, ``packets // 20``
  TCP and UDP conversations (50k), packets drawn by a skewed (Pareto)
  popularity, both directions, 96-byte snaplen;
- ``pareto4``: the same conversations with four times the packets (to
  show memory that does not grow with a capture's length);
- ``ipv6``: ``pareto`` with a third of the conversations over IPv6;
- ``vlan``: ``pareto`` with every frame 802.1Q-tagged (8 VLANs);
- ``gaps``: long conversations (15 minutes) sent in bursts separated by
  idle gaps around the 30 s inactive timeout, and longer than the 300 s
  active timeout;
- ``scan``: one SYN per flow, every packet a new flow (more flows than the
  default table holds: evictions);
- ``elephants``: 8 conversations carrying ~95% of the packets, beside 1000
  small ones.

Addresses: the inside hosts in 198.51.100.0/24, the outside ones in
203.0.113.0/24; their IPv6 forms in 2001:db8::/32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parent / "data"
T0 = 1_700_000_000
INSIDE = 0xC6336400          # 198.51.100.0
OUTSIDE = 0xCB007100         # 203.0.113.0
V6_PREFIX = bytes.fromhex("20010db8") + bytes(8)      # 2001:db8::/96 + the IPv4 address
GEN_VERSION = 1              # bump when a shape's packets change (the cache's key)

# a Packets dict: t (float64 s from the start), v6 (bool), vlan (uint16, 0: untagged),
# src, dst (uint32: an IPv4 address, or an IPv6 one's last 32 bits), proto (6 / 17),
# sport, dport (uint16), pay (int: transport payload bytes), flags (uint8, TCP)
Packets = dict


def _conversations(rng, c: int, v6_share: float = 0.0, vlan: bool = False,
                   tcp_share: float = 0.7) -> dict:
    """``c`` conversations: inside client, outside server, ports, protocol."""
    tcp = rng.random(c) < tcp_share
    cport = (1024 + rng.permutation(c * 2)[:c] % 64000).astype(np.uint16)
    return {
        "cli": (INSIDE | rng.integers(1, 255, c)).astype(np.uint32),
        "srv": (OUTSIDE | rng.integers(1, 255, c)).astype(np.uint32),
        "cport": cport,
        "sport": np.where(tcp, rng.choice([443, 443, 80, 22, 8080, 993], c),
                          rng.choice([53, 123, 443, 5353], c)).astype(np.uint16),
        "proto": np.where(tcp, 6, 17).astype(np.uint8),
        "v6": rng.random(c) < v6_share,
        "vlan": (rng.integers(0, 8, c) * 10 + 10).astype(np.uint16) if vlan
                else np.zeros(c, np.uint16),
    }


def _expand(rng, conv: dict, idx, from_client, t, first, last) -> Packets:
    """Packets of conversations ``idx`` (one row a packet) in the direction
    ``from_client``, at ``t``; ``first``/``last``: the conversation's first
    (SYN) and last (FIN) packet."""
    cli, srv = conv["cli"][idx], conv["srv"][idx]
    cp, sp = conv["cport"][idx], conv["sport"][idx]
    proto = conv["proto"][idx]
    n = len(idx)
    # server to client: mostly full segments; client to server: small
    big = rng.random(n) < 0.6
    pay = np.where(from_client, rng.integers(0, 200, n),
                   np.where(big, 1448, rng.integers(0, 1200, n)))
    flags = np.where(pay > 0, 0x18, 0x10)
    flags = np.where(first, 0x02, np.where(last, 0x11, flags))
    pay = np.where((proto == 6) & (first | last), 0, pay)
    pay = np.where(proto == 17, np.maximum(pay, 20), pay)
    return {
        "t": t,
        "v6": conv["v6"][idx],
        "vlan": conv["vlan"][idx],
        "src": np.where(from_client, cli, srv),
        "dst": np.where(from_client, srv, cli),
        "proto": proto,
        "sport": np.where(from_client, cp, sp),
        "dport": np.where(from_client, sp, cp),
        "pay": pay,
        "flags": np.where(proto == 6, flags, 0).astype(np.uint8),
    }


def pareto(packets: int = 1_000_000, conversations: int | None = None, span: float = 50.0,
           v6_share: float = 0.0, vlan: bool = False, seed: int = 1) -> Packets:
    """Conversations of skewed popularity (Pareto, alpha 1.2), each from a
    uniform start for as long as its packets take at ~100/s (the busiest run
    to the end), both directions, the first packet the client's."""
    rng = np.random.default_rng(seed)
    c = conversations or max(1, packets // 20)
    conv = _conversations(rng, c, v6_share, vlan)
    w = rng.pareto(1.2, c) + 1.0
    extra = max(0, packets - 2 * c)
    idx = np.concatenate([np.repeat(np.arange(c), 2),
                          rng.choice(c, extra, p=w / w.sum())])
    idx.sort(kind="stable")
    counts = np.bincount(idx, minlength=c)
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.arange(len(idx)) - starts[idx]
    begin = rng.random(c) * span * 0.95
    dur = np.minimum(span - begin, np.maximum(0.05, counts * 0.01))
    u = rng.random(len(idx))
    # increasing in rank within each conversation: sort u per conversation
    order = np.lexsort((u, idx))
    u = u[order]
    u[rank == 0] = 0.0
    t = begin[idx] + u * dur[idx]
    from_client = np.where(rank == 0, True, np.where(rank == 1, False,
                                                     rng.random(len(idx)) < 0.4))
    last = rank == counts[idx] - 1
    return _expand(rng, conv, idx, from_client, t, rank == 0, last & (rank > 0))


def pareto4(packets: int = 1_000_000, seed: int = 1) -> Packets:
    """``pareto``'s conversations (``packets // 20``) with ``4 * packets``."""
    return pareto(packets * 4, conversations=max(1, packets // 20), seed=seed)


def ipv6(packets: int = 1_000_000, seed: int = 1) -> Packets:
    return pareto(packets, v6_share=1 / 3, seed=seed)


def vlan(packets: int = 1_000_000, seed: int = 1) -> Packets:
    return pareto(packets, vlan=True, seed=seed)


def gaps(packets: int = 1_000_000, span: float = 900.0, seed: int = 1) -> Packets:
    """Conversations (``packets // 200``) sending bursts of packets (within
    0.5 s) separated by idle gaps of 20 to 40 s, some 60 s, over ``span``
    seconds (the active timeout, 300 s, passes three times); no FIN."""
    rng = np.random.default_rng(seed)
    c = max(1, packets // 200)
    conv = _conversations(rng, c)
    gap = np.where(rng.random((c, 64)) < 0.9, rng.uniform(20, 40, (c, 64)), 60.0)
    bursts = np.cumsum(gap, axis=1) - gap[:, :1] + rng.random((c, 1)) * 30
    b_conv, b_k = np.nonzero(bursts < span)
    b_t = bursts[b_conv, b_k]
    per = max(1, packets // len(b_conv))
    idx = np.repeat(b_conv, per)
    t = np.repeat(b_t, per) + rng.random(len(idx)) * 0.5
    first = np.zeros(len(idx), bool)
    return _expand(rng, conv, idx, rng.random(len(idx)) < 0.5, t, first, first)


def scan(packets: int = 1_000_000, span: float = 50.0, seed: int = 1) -> Packets:
    """One host sending one TCP SYN to each (address, port) of 203.0.113.0/24:
    ``packets`` flows of one packet each."""
    rng = np.random.default_rng(seed)
    n = packets
    k = (np.arange(n, dtype=np.int64) * 2654435761) % (1 << 24)     # distinct, shuffled
    return {
        "t": np.sort(rng.random(n)) * span,
        "v6": np.zeros(n, bool),
        "vlan": np.zeros(n, np.uint16),
        "src": np.full(n, INSIDE | 7, np.uint32),
        "dst": (OUTSIDE | (k >> 16)).astype(np.uint32),
        "proto": np.full(n, 6, np.uint8),
        "sport": np.full(n, 40000, np.uint16),
        "dport": (k & 0xFFFF).astype(np.uint16),
        "pay": np.zeros(n, np.int64),
        "flags": np.full(n, 0x02, np.uint8),
    }


def elephants(packets: int = 1_000_000, span: float = 50.0, seed: int = 1) -> Packets:
    """8 TCP conversations over the whole span with ~95% of the packets,
    beside 1000 short ones (``pareto`` of the rest)."""
    rng = np.random.default_rng(seed)
    mice = pareto(packets // 20, conversations=1000, span=span, seed=seed + 1)
    n = packets - len(mice["t"])
    c = 8
    conv = _conversations(rng, c, tcp_share=1.0)
    conv["cli"] = conv["cli"] ^ 0x80                # not one of the mice's clients
    idx = rng.integers(0, c, n)
    t = rng.random(n) * span
    first = np.zeros(n, bool)
    big = _expand(rng, conv, idx, rng.random(n) < 0.3, t, first, first)
    return {k: np.concatenate([big[k], mice[k]]) for k in big}


SHAPES = {"pareto": pareto, "pareto4": pareto4, "ipv6": ipv6, "vlan": vlan, "gaps": gaps,
          "scan": scan, "elephants": elephants}


def _put(a, rows, off: int, values, fmt: str) -> None:
    """Write ``values`` (one per row of ``rows``) as ``fmt`` at byte ``off``."""
    b = np.ascontiguousarray(np.asarray(values).astype(fmt)).view(np.uint8)
    a[rows, off:off + b.size // max(1, len(rows))] = b.reshape(len(rows), -1)


def write_pcap(path: Path, p: Packets, snaplen: int = 96, block: int = 1 << 18) -> int:
    """Write ``p`` in time order as a pcap file; returns the packet count."""
    order = np.argsort(p["t"], kind="stable")
    n = len(order)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(np.array([0xA1B2C3D4], "<u4").tobytes()
                + np.array([2, 4], "<u2").tobytes()
                + np.array([0, 0, snaplen, 1], "<u4").tobytes())
        for lo in range(0, n, block):
            sel = order[lo:lo + block]
            q = {k: v[sel] for k, v in p.items()}
            f.write(_frames(q, snaplen))
    tmp.replace(path)
    return n


def _frames(q: Packets, snaplen: int) -> bytes:
    m = len(q["t"])
    a = np.zeros((m, 16 + snaplen), np.uint8)
    tcp = q["proto"] == 6
    l4 = np.where(tcp, 20, 8)
    iph = np.where(q["v6"], 40, 20)
    tagged = q["vlan"] > 0
    l2 = np.where(tagged, 18, 14)
    wire = l2 + iph + l4 + q["pay"]
    cap = np.minimum(wire, snaplen)
    us = np.round(q["t"] * 1e6).astype(np.int64)
    allr = np.arange(m)
    _put(a, allr, 0, T0 + us // 1_000_000, "<u4")
    _put(a, allr, 4, us % 1_000_000, "<u4")
    _put(a, allr, 8, cap, "<u4")
    _put(a, allr, 12, wire, "<u4")
    a[:, 16:22] = (2, 0, 0, 0, 0, 1)
    a[:, 22:28] = (2, 0, 0, 0, 0, 2)
    for is_tagged in (False, True):
        for is_v6 in (False, True):
            rows = np.nonzero((tagged == is_tagged) & (q["v6"] == is_v6))[0]
            if not len(rows):
                continue
            o = 28
            if is_tagged:
                _put(a, rows, o, np.full(len(rows), 0x8100), ">u2")
                _put(a, rows, o + 2, q["vlan"][rows], ">u2")
                o += 4
            _put(a, rows, o, np.full(len(rows), 0x86DD if is_v6 else 0x0800), ">u2")
            o += 2
            proto = q["proto"][rows]
            if is_v6:
                _put(a, rows, o, np.full(len(rows), 0x60000000), ">u4")
                _put(a, rows, o + 4, l4[rows] + q["pay"][rows], ">u2")
                a[rows, o + 6] = proto
                a[rows, o + 7] = 64
                a[rows, o + 8:o + 20] = np.frombuffer(V6_PREFIX, np.uint8)
                _put(a, rows, o + 20, q["src"][rows], ">u4")
                a[rows, o + 24:o + 36] = np.frombuffer(V6_PREFIX, np.uint8)
                _put(a, rows, o + 36, q["dst"][rows], ">u4")
                o += 40
            else:
                a[rows, o] = 0x45
                _put(a, rows, o + 2, 20 + l4[rows] + q["pay"][rows], ">u2")
                _put(a, rows, o + 4, rows & 0xFFFF, ">u2")
                _put(a, rows, o + 6, np.full(len(rows), 0x4000), ">u2")
                a[rows, o + 8] = 64
                a[rows, o + 9] = proto
                _put(a, rows, o + 12, q["src"][rows], ">u4")
                _put(a, rows, o + 16, q["dst"][rows], ">u4")
                o += 20
            _put(a, rows, o, q["sport"][rows], ">u2")
            _put(a, rows, o + 2, q["dport"][rows], ">u2")
            t_rows, u_rows = rows[proto == 6], rows[proto != 6]
            if len(t_rows):
                _put(a, t_rows, o + 4, np.ones(len(t_rows)), ">u4")
                _put(a, t_rows, o + 8, np.ones(len(t_rows)), ">u4")
                a[t_rows, o + 12] = 0x50
                a[t_rows, o + 13] = q["flags"][t_rows]
                _put(a, t_rows, o + 14, np.full(len(t_rows), 65535), ">u2")
            if len(u_rows):
                _put(a, u_rows, o + 4, 8 + q["pay"][u_rows], ">u2")
    keep = np.arange(16 + snaplen)[None, :] < (16 + cap)[:, None]
    return a[keep].tobytes()


def capture(shape: str, packets: int = 1_000_000, seed: int = 1, snaplen: int = 96,
            data: Path = DATA) -> Path:
    """The pcap file of ``shape`` (a ``SHAPES`` name), generated on first use."""
    path = data / f"shape_{shape}_{packets}_s{seed}_n{snaplen}_v{GEN_VERSION}.pcap"
    if not path.exists():
        write_pcap(path, SHAPES[shape](packets, seed=seed), snaplen)
    return path
