"""The daemon's receive call (Daemon.receive) against a scripted netlink
socket, on the real clock: it exports when the pacer says, sleeps the waits
it asks for while looking at the queue, and leaves for the loop when it
should.  The pacing rules themselves: test_daemon_pace.py."""

import time

from nfflowd.app import config
from nfflowd.app.daemon import Daemon
from nfflowd.app.pacing import EVENT_TRUESIZE, STREAM_BATCH, STREAM_WAIT_STEADY, WAIT_SLICE_SLOW
from nfflowd.conntrack import DecodeResult
from nfflowd.io.netlink import Datagrams


class Sock:
    """recv gives ``rounds[i]`` datagrams (one event each, see decoder) at its
    i-th call, after ``takes`` seconds; queued_bytes() is what the next
    call will bring.  ``exports_at`` records, at each call, how many exports
    the pipeline had made."""
    rcvbuf = 64 << 20

    def __init__(self, pipeline, rounds, truesize=1280, takes=0.0):
        self.pipeline = pipeline
        self.rounds = list(rounds)
        self.truesize = truesize
        self.takes = takes
        self.exports_at = []
        self.looks = 0

    def recv(self, max_datagrams):
        if self.takes:
            time.sleep(self.takes)
        self.exports_at.append(len(self.pipeline.exports))
        got = self.rounds.pop(0) if self.rounds else 0
        return Datagrams(bytes(got), list(range(got)), list(range(1, got + 1)))

    def queued_bytes(self):
        self.looks += 1
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


def daemon(rounds, truesize=1280, takes=0.0):
    d = Daemon(config.parse({"syslog": {"enabled": False}}))
    d.decoder = decoder
    d.pipeline = Pipeline()
    d.sock = Sock(d.pipeline, rounds, truesize, takes)
    d.correlator = Correlator()
    d.pacer.window_start = time.monotonic()     # a rate window just opened
    return d


def test_in_a_burst_the_flows_go_before_the_wait():
    d = daemon([100, 0])
    d.pacer.in_burst = True
    d.pacer.exported(time.monotonic())          # STREAM_FLUSH alone would not export
    pending = Pending()
    d.receive(pending)
    assert d.sock.exports_at == [0, 1]          # exported before the second round
    assert d.pipeline.exports == [100] and pending == []


def test_a_trickle_is_not_exported_at_every_wait():
    d = daemon([10, 10, 0])
    d.pacer.exported(time.monotonic())          # flows went just now
    pending = Pending()
    d.receive(pending)
    assert d.pacer.in_burst is False
    assert d.pipeline.exports == []             # the flush deadline sends them
    assert len(pending) == 20


def test_the_waits_look_at_the_queue_and_learn_a_datagrams_size():
    # one datagram at once (a rate of 10,000/s at the most: a slow stream),
    # whose wait (STREAM_WAIT_STEADY, or the time for a batch at that rate)
    # looks every WAIT_SLICE_SLOW and sees the next round's 1000 datagrams
    # of 1500 bytes: not yet a batch
    d = daemon([1, 1000, 0], truesize=1500)
    t0 = time.monotonic()
    d.receive(Pending())
    took = time.monotonic() - t0
    assert min(STREAM_WAIT_STEADY, (STREAM_BATCH - 1) / 10_000) <= took < 1.0
    assert 3 <= d.sock.looks <= 1 + STREAM_WAIT_STEADY / WAIT_SLICE_SLOW
    assert d.pacer.truesize == 1500
    assert d.pacer.start_wait(0.0).full == STREAM_BATCH * 1500 != STREAM_BATCH * EVENT_TRUESIZE


def test_a_stopping_daemon_leaves_the_receive_loop_at_the_next_wait():
    d = daemon([10] * 10, takes=0.001)
    d.stopping = True
    d.receive(Pending())
    assert len(d.sock.rounds) == 9 and d.sock.looks == 0


def test_a_full_round_is_followed_by_the_next_at_once():
    d = daemon([STREAM_BATCH, STREAM_BATCH, 0])
    pending = Pending()
    d.receive(pending)
    assert d.sock.looks == 0 and d.sock.rounds == []
    assert d.pacer.in_burst is True
    # the burst's tail went when netlink was found empty
    assert sum(d.pipeline.exports) == 2 * STREAM_BATCH and pending == []
