"""The receive loop's rounds (Daemon._receive) against a scripted netlink
socket: when the flows of a round are exported, what the pacing wait is
told, and what it learns of the queue."""

import time

import pytest

from nfflowd.app import config
from nfflowd.app import daemon as daemon_mod
from nfflowd.conntrack import DecodeResult
from nfflowd.io.netlink import Datagrams
from nfflowd.app.daemon import EVENT_TRUESIZE, STREAM_BATCH, STREAM_WAIT, STREAM_WAIT_STEADY, Daemon


class Sock:
    """recv gives ``rounds[i]`` datagrams at its i-th call; queued_bytes()
    is what the next call will bring."""
    rcvbuf = 64 << 20

    def __init__(self, rounds, truesize=1280, takes=0.0):
        self.rounds = list(rounds)
        self.truesize = truesize
        self.takes = takes              # seconds a call takes (a slower stream)

    def recv(self, max_datagrams):
        if self.takes:
            time.sleep(self.takes)
        got = self.rounds.pop(0) if self.rounds else 0
        return Datagrams(bytes(got), list(range(got)), list(range(1, got + 1)))

    def queued_bytes(self):
        return (self.rounds[0] if self.rounds else 0) * self.truesize


def decoder(buf, starts, ends, stride):
    """One event per datagram."""
    return DecodeResult([("event",)] * len(starts), 0, 0, False, [])


class Correlator:
    reap_pending = 0

    def handle_batch(self, events, now_ns, out):
        out.extend(events)              # a flow per event

    def take_nat_events(self):
        return []


class Pending(list):
    """The daemon's FlowBatchBuilder, as a list of events."""

    def batch(self):
        return list(self)


class Pipeline:
    def __init__(self):
        self.exports = []

    def export(self, flows, nat_events, now_ns, uptime):
        self.exports.append(len(flows))

    def tick(self, now_ns):
        pass


def daemon(rounds, truesize=1280, takes=0.0, sleeps=False):
    d = Daemon(config.parse({"syslog": {"enabled": False}}))
    d.sock = Sock(rounds, truesize, takes)
    d.decoder = decoder
    d.correlator = Correlator()
    d.pipeline = Pipeline()
    d.paces = []

    def pace(end, rate, full=float("inf")):
        # what the wait is asked for, and what is still pending then; the
        # queue is seen full at once (the next round's datagrams are there),
        # or (``sleeps``) at the wait's end
        d.paces.append({"pending": len(d.pending), "rate": rate, "full": full,
                        "wait": end - time.monotonic()})
        if sleeps:
            time.sleep(max(0.0, end - time.monotonic()))
        d._queued_seen = d.sock.queued_bytes()
        return False

    d._pace = pace
    d.pending = Pending()
    d._window_start = time.monotonic()      # a rate window just opened
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
    d._flush(Pending(["flow"]))             # flows went just now
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
    d._flush(Pending())
    d._receive(d.pending)
    assert [p["pending"] for p in d.paces] == [0, 10]
    assert d.pipeline.exports == [10]


@pytest.mark.parametrize("state", ["burst", "fast a moment ago", "steady"])
def test_a_steady_stream_gathers_longer_rounds_than_a_burst(state):
    # 10 datagrams per call of >= 5 ms: at most 2000 a second, so a batch
    # would take seconds to gather; the wait is bounded by its cap
    d = daemon([10, 10, 10, 0], takes=0.005)
    d._in_burst = state == "burst"
    if state == "fast a moment ago":
        d._window_rate = 2 * daemon_mod.FAST_RATE
        d._window_start = time.monotonic()     # (the window stays open)
    d._receive(d.pending)
    waits = [p["wait"] for p in d.paces]
    # (a round that came at less than half the last one's rate, a sleep
    # that overslept, is taken for the stream's end: no wait there)
    assert waits
    if state == "steady":
        assert all(STREAM_WAIT < w <= STREAM_WAIT_STEADY for w in waits)
    else:
        # a flush that slows down near its end: its tail waits no longer
        assert all(w <= STREAM_WAIT for w in waits)


@pytest.mark.parametrize("before", [0, 10_000])
def test_the_stream_is_fast_by_its_rate_over_a_window(before):
    # a window closing with `before` datagrams received in it, and 100 more
    d = daemon([100, 0])
    d._window_start = time.monotonic() - daemon_mod.FAST_WINDOW
    d._window_count = before
    d._receive(d.pending)
    assert d._window_count == 0                 # a new window began
    if before:
        assert d._window_rate >= daemon_mod.FAST_RATE
    else:
        assert d._window_rate < daemon_mod.FAST_RATE


def test_a_stream_never_found_empty_goes_back_to_the_loop(monkeypatch):
    # rounds of 10 ms waits, always more queued: the call returns after
    # about RECEIVE_SPAN, not after its 64 rounds (0.64 s)
    monkeypatch.setattr(daemon_mod, "STREAM_WAIT_STEADY", 0.01)
    monkeypatch.setattr(daemon_mod, "RECEIVE_SPAN", 0.05)
    d = daemon([10] * 100, takes=0.001, sleeps=True)
    d._receive(d.pending)
    taken = 100 - len(d.sock.rounds)
    assert 2 <= taken < 64
    # nothing taken was lost (some went at the waits: STREAM_FLUSH)
    assert len(d.pending) + sum(d.pipeline.exports) == 10 * taken


def test_a_stopping_daemon_leaves_the_receive_loop_at_the_next_wait():
    d = daemon([10] * 10, takes=0.001)
    d.stopping = True
    d._receive(d.pending)
    assert len(d.sock.rounds) == 9 and d.paces == []


def test_a_burst_that_slowed_to_a_steady_stream_ends():
    # in a burst (a few thousand timed-out connections at once, say), then a
    # window of 0.2 s brings 100 datagrams: the burst is over, waits grow
    d = daemon([100, 0])
    d._in_burst = True
    d._window_start = time.monotonic() - daemon_mod.FAST_WINDOW
    d._window_count = 1
    d._receive(d.pending)
    assert d._window_rate < daemon_mod.FAST_RATE / 2 and d._in_burst is False


def test_a_full_round_after_a_quiet_spell_does_not_end_the_burst_it_begins():
    d = daemon([STREAM_BATCH, 0])
    d._window_start = time.monotonic() - 10      # nothing for 10 s
    d._receive(d.pending)
    assert d._in_burst is True
