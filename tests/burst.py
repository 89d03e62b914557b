"""Many connections at once, for the burst tests and bench/bench_burst.py.

    python burst.py sink ADDR --ports P0 P1 ... --lifetime S
        UDP listeners (read and discarded); prints READY; exits after S seconds.
    python burst.py udp SRC DST N --dports P0 P1 ... [--nbytes B]
        N UDP "connections": one datagram each from SRC, source ports
        10000..59999 for each destination port in turn (N <= 50000 * ports);
        paced so that the veth backlog is not overrun; prints SENT N.
    python burst.py churn SRC DST RATE SECONDS --dports P0 P1 ... [--nbytes B]
        as udp, RATE connections per second for SECONDS (steady churn).
    python burst.py chatter ADDR PORT SECONDS
        one TCP connection to an echo server, 100 bytes echoed every 0.2 s
        for SECONDS; prints LOCAL addr port first, DONE at the end.

Every loop is bounded; every socket has a timeout.
"""

import argparse
import socket
import sys
import time

FIRST_PORT, PORTS_PER_DST = 10000, 50000


def sink(addr, ports, lifetime):
    socks = []
    for p in ports:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((addr, p))
        s.setblocking(False)
        socks.append(s)
    print("READY", flush=True)
    end = time.monotonic() + lifetime
    import select
    while time.monotonic() < end:
        r, _, _ = select.select(socks, [], [], 0.5)
        for s in r:
            for _ in range(1000):
                try:
                    s.recv(2048)
                except BlockingIOError:
                    break


def _send(src, dst, i, dports, payload) -> int:
    """Connection ``i``: one datagram from its own source port (1 if sent)."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((src, FIRST_PORT + i % PORTS_PER_DST))
    try:
        s.sendto(payload, (dst, dports[i // PORTS_PER_DST]))
        return 1
    except OSError:
        return 0
    finally:
        s.close()


def _check(n, dports):
    if n > PORTS_PER_DST * len(dports):
        sys.exit(f"at most {PORTS_PER_DST * len(dports)} connections with these ports")


def udp(src, dst, n, dports, nbytes):
    _check(n, dports)
    payload = b"x" * nbytes
    sent = 0
    for i in range(n):
        sent += _send(src, dst, i, dports, payload)
        if i % 200 == 199:
            time.sleep(0.002)       # netdev_max_backlog is 1000 packets
    print("SENT", sent, flush=True)


def churn(src, dst, rate, seconds, dports, nbytes):
    """RATE connections per second for SECONDS, evenly paced (each a new
    source and destination port pair, as ``udp``); prints SENT N and, if the
    pace could not be kept, how far behind it ended."""
    n = int(rate * seconds)
    _check(n, dports)
    payload = b"x" * nbytes
    sent = 0
    start = time.monotonic()
    for i in range(n):
        ahead = start + i / rate - time.monotonic()
        if ahead > 0.001:
            time.sleep(ahead)
        sent += _send(src, dst, i, dports, payload)
    late = time.monotonic() - (start + n / rate)
    print("SENT", sent, f"LATE {max(0.0, late):.3f}", flush=True)


def chatter(addr, port, seconds):
    s = socket.create_connection((addr, port), timeout=5)
    print("LOCAL", *s.getsockname()[:2], flush=True)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        s.sendall(b"y" * 100)
        got = 0
        while got < 100:
            chunk = s.recv(100 - got)
            if not chunk:
                break
            got += len(chunk)
        time.sleep(0.2)
    s.close()
    print("DONE", flush=True)


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    sk = sub.add_parser("sink")
    sk.add_argument("addr")
    sk.add_argument("--ports", type=int, nargs="+", required=True)
    sk.add_argument("--lifetime", type=float, default=60)
    u = sub.add_parser("udp")
    u.add_argument("src"), u.add_argument("dst"), u.add_argument("n", type=int)
    u.add_argument("--dports", type=int, nargs="+", required=True)
    u.add_argument("--nbytes", type=int, default=32)
    ch = sub.add_parser("churn")
    ch.add_argument("src"), ch.add_argument("dst")
    ch.add_argument("rate", type=float), ch.add_argument("seconds", type=float)
    ch.add_argument("--dports", type=int, nargs="+", required=True)
    ch.add_argument("--nbytes", type=int, default=32)
    c = sub.add_parser("chatter")
    c.add_argument("addr"), c.add_argument("port", type=int), c.add_argument("seconds", type=float)
    a = ap.parse_args()
    if a.cmd == "sink":
        sink(a.addr, a.ports, a.lifetime)
    elif a.cmd == "udp":
        udp(a.src, a.dst, a.n, a.dports, a.nbytes)
    elif a.cmd == "churn":
        churn(a.src, a.dst, a.rate, a.seconds, a.dports, a.nbytes)
    else:
        chatter(a.addr, a.port, a.seconds)


if __name__ == "__main__":
    main()
