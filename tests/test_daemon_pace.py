"""The receive loop's pacing wait (Daemon._pace): it ends early when the
stream stops, so a burst's tail is not held for the rest of the wait."""

import time
from types import SimpleNamespace

from nfflowd.app import daemon
from nfflowd.app.daemon import WAIT_EARLY_MIN, WAIT_SLICE, WAIT_SLICE_SLOW, Daemon


class Queue:
    """The netlink socket's queued_bytes(), scripted: ``grow`` bytes more at
    each call while ``growing`` calls last."""

    def __init__(self, growing, grow=1000, start=0):
        self.calls = 0
        self.growing = growing
        self.grow = grow
        self.value = start

    def queued_bytes(self):
        self.calls += 1
        if self.value is None:
            return None
        if self.calls <= self.growing:
            self.value += self.grow
        return self.value


FAST = 2 * WAIT_EARLY_MIN / WAIT_SLICE          # datagrams/s: early ends apply
SLOW = WAIT_EARLY_MIN / WAIT_SLICE / 2          # they do not


def pace(q, wait, rate):
    me = SimpleNamespace(sock=q)
    t0 = time.monotonic()
    stopped = Daemon._pace(me, t0 + wait, rate)
    return stopped, time.monotonic() - t0


def test_a_stream_that_stops_ends_the_wait_at_the_next_slice():
    q = Queue(growing=3)            # grows at the first three looks, then not
    stopped, took = pace(q, 1.0, FAST)
    assert stopped is True
    assert q.calls == 4             # one look before the first slice, three after
    assert took < 0.5               # not the whole second


def test_a_stream_that_goes_on_waits_to_the_end():
    q = Queue(growing=10**6)
    stopped, took = pace(q, 20 * WAIT_SLICE, FAST)
    assert stopped is False
    assert took >= 20 * WAIT_SLICE
    assert q.calls >= 2


def test_a_slow_stream_is_not_ended_by_a_quiet_slice():
    q = Queue(growing=0)            # nothing new: would end a fast stream's wait
    stopped, took = pace(q, 5 * WAIT_SLICE_SLOW, SLOW)
    assert stopped is False
    assert took >= 5 * WAIT_SLICE_SLOW
    assert 2 <= q.calls <= 6        # a look every WAIT_SLICE_SLOW, not every WAIT_SLICE


def test_a_slow_stream_ends_its_wait_once_the_batch_has_gathered():
    # the first round of a flush is a datagram or two: its rate says "slow"
    q = Queue(growing=10**6, grow=1000)
    t0 = time.monotonic()
    stopped = Daemon._pace(SimpleNamespace(sock=q), t0 + 1.0, SLOW, full=3500)
    assert stopped is False and q.calls == 4
    assert time.monotonic() - t0 < 0.5


def test_without_so_meminfo_the_wait_is_whole():
    q = Queue(growing=0, start=None)
    stopped, took = pace(q, 5 * WAIT_SLICE, FAST)
    assert stopped is False and took >= 5 * WAIT_SLICE


def test_a_wait_already_over_returns_at_once():
    q = Queue(growing=0)
    assert Daemon._pace(SimpleNamespace(sock=q), time.monotonic() - 1, FAST) is False
    assert q.calls == 0
    assert daemon.WAIT_SLICE < daemon.STREAM_WAIT


def test_a_wait_ends_once_the_batch_has_gathered():
    q = Queue(growing=10**6, grow=1000)
    me = SimpleNamespace(sock=q)
    t0 = time.monotonic()
    stopped = Daemon._pace(me, t0 + 1.0, FAST, full=3500)
    assert stopped is False                 # not stopped: the batch is there
    assert q.calls == 4                     # 1000, 2000, 3000, 4000 >= 3500
    assert me._queued_seen == 4000          # what _receive learns sizes from
    assert time.monotonic() - t0 < 0.5      # not the whole second
