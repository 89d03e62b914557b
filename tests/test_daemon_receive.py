"""The receive loop's rounds (Daemon._receive) against a scripted netlink
socket: when the flows of a round are exported, what the pacing wait is
told, and what it learns of the queue."""

import time

import pytest

from nfflowd import config
from nfflowd.conntrack import DecodeResult
from nfflowd.daemon import EVENT_TRUESIZE, STREAM_BATCH, Daemon


class Sock:
    """recv_batch gives ``rounds[i]`` datagrams (one event each) at its
    i-th call; queued_bytes() is what the next call will bring."""
    rcvbuf = 64 << 20

    def __init__(self, rounds, truesize=1280):
        self.rounds = list(rounds)
        self.truesize = truesize
        self.last_datagrams = 0

    def recv_batch(self, max_datagrams, blocks=False):
        got = self.rounds.pop(0) if self.rounds else 0
        self.last_datagrams = got
        return DecodeResult([("event",)] * got, 0, 0, False, [])

    def queued_bytes(self):
        return (self.rounds[0] if self.rounds else 0) * self.truesize


class Correlator:
    reap_pending = 0

    def handle_batch(self, events, now_ns, out):
        out.extend(events)              # a flow per event

    def take_nat_events(self):
        return []


class Pipeline:
    def __init__(self):
        self.exports = []

    def export(self, flows, nat_events, now_ns, uptime):
        self.exports.append(len(flows))

    def tick(self, now_ns):
        pass


def daemon(rounds, truesize=1280):
    d = Daemon(config.parse({"syslog": {"enabled": False}}))
    d.sock = Sock(rounds, truesize)
    d.correlator = Correlator()
    d.pipeline = Pipeline()
    d.paces = []

    def pace(end, rate, full=float("inf")):
        # what the wait is asked for, and what is still pending then; the
        # queue is seen full at once (the next round's datagrams are there)
        d.paces.append({"pending": len(d.pending), "rate": rate, "full": full})
        d._queued_seen = d.sock.queued_bytes()
        return False

    d._pace = pace
    d.pending = []
    return d


def test_in_a_burst_the_flows_go_before_the_wait_not_after():
    d = daemon([100, 100, 0])
    d._in_burst = True
    d._last_flush = time.monotonic()        # STREAM_FLUSH alone would not export
    d._receive(d.pending)
    assert [p["pending"] for p in d.paces] == [0, 0]
    assert d.pipeline.exports == [100, 100]
    assert d.pending == []


def test_a_trickle_is_not_exported_at_every_wait():
    d = daemon([10, 10, 0])
    d._flush(["flow"])                      # flows went just now
    d.pipeline.exports.clear()
    d._receive(d.pending)
    assert d._in_burst is False
    assert [p["pending"] for p in d.paces] == [10, 20]
    assert d.pipeline.exports == []         # the flush deadline sends them
    assert len(d.pending) == 20


def test_the_wait_learns_what_a_datagram_takes_of_the_buffer():
    d = daemon([100, 1000, 0], truesize=1500)
    d._receive(d.pending)
    # the first wait knows only the default; it saw a queue of 1000 * 1500
    # bytes, and 1000 datagrams were drained from it
    assert [p["full"] for p in d.paces] == [STREAM_BATCH * EVENT_TRUESIZE,
                                            STREAM_BATCH * 1500]
    assert d._truesize == 1500


@pytest.mark.parametrize("in_burst", [True, False])
def test_a_burst_resuming_waits_at_the_burst_rate(in_burst):
    d = daemon([1, 0])
    d._in_burst = in_burst
    d._burst_rate = 100_000.0
    d._receive(d.pending)
    (p,) = d.paces
    if in_burst:
        # one datagram in a moment says nothing of a flush's rate
        assert p["rate"] == 100_000.0
    else:
        assert p["rate"] <= 10_000.0       # its own: one datagram per >= 0.1 ms
    assert d._burst_rate == p["rate"]


def test_a_deadline_that_found_nothing_holds_no_stream_back():
    # the periodic flush ran just now with nothing to send: the first flows
    # of a stream starting then go at its first wait, not STREAM_FLUSH later
    d = daemon([10, 10, 0])
    d._flush([])
    d._receive(d.pending)
    assert [p["pending"] for p in d.paces] == [0, 10]
    assert d.pipeline.exports == [10]
