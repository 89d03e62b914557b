"""Receive pacing (app/pacing.py) on a made-up clock: how long a trickle
waits for a batch, when a wait ends early, when flows go before a wait, and
when a burst begins and ends.  Nothing sleeps: every call is told ``now``."""

import pytest

from nfflowd.app.pacing import (
    BURST_QUIET, EVENT_TRUESIZE, FAST_RATE, FAST_WINDOW, RECEIVE_SPAN, RECV_BATCH,
    REAP_PER_SECOND_OF_WAIT, REAP_QUIET, REAP_STREAM_RATE, STREAM_BATCH, STREAM_FLUSH,
    STREAM_WAIT, STREAM_WAIT_STEADY, WAIT_EARLY_MIN, WAIT_SLICE, WAIT_SLICE_SLOW, Pacer, Wait)
from nfflowd.ctcache import DEAD_MAX

FAST = 2 * WAIT_EARLY_MIN / WAIT_SLICE          # datagrams/s: early ends apply
SLOW = WAIT_EARLY_MIN / WAIT_SLICE / 2          # they do not
RCVBUF = 64 << 20


def run(wait, queue, now=100.0):
    """Play the daemon's part in a wait: look at the queue (``queue(i)`` at
    the i-th look; None: the socket cannot tell), sleep what the wait says.
    Returns (looks, seconds slept)."""
    if not wait.due(now):
        return 0, 0.0
    looks, slept = 1, 0.0
    pause = wait.next(queue(0), now)
    while pause > 0:
        slept += pause
        if wait.over:
            break
        pause = wait.next(queue(looks), now + slept)
        looks += 1
    return looks, slept


def growing(until, grow=1000):
    """A queue that grows by ``grow`` bytes at each of the first ``until`` looks."""
    return lambda i: grow * min(i + 1, until)


# -- one wait ----------------------------------------------------------------------
def test_a_stream_that_stops_ends_the_wait_at_the_next_slice():
    w = Wait(101.0, FAST)
    looks, slept = run(w, growing(3))       # grows at the first three looks, then not
    assert w.stopped is True
    assert looks == 4                       # the one before the first slice, three after
    assert slept == pytest.approx(3 * WAIT_SLICE)


def test_a_stream_that_goes_on_waits_to_the_end():
    w = Wait(100.0 + 20 * WAIT_SLICE, FAST)
    looks, slept = run(w, growing(10**6))
    assert w.stopped is False
    assert slept == pytest.approx(20 * WAIT_SLICE)
    assert 21 <= looks <= 22                # (22: the sums of slices fall a hair short)


def test_a_slow_stream_is_not_ended_by_a_quiet_slice():
    w = Wait(100.0 + 5 * WAIT_SLICE_SLOW, SLOW)
    looks, slept = run(w, growing(0))       # nothing new: would end a fast stream's wait
    assert w.stopped is False
    assert slept == pytest.approx(5 * WAIT_SLICE_SLOW)
    assert 6 <= looks <= 7                  # a look every WAIT_SLICE_SLOW, not every WAIT_SLICE


def test_a_fast_stream_is_ended_by_a_quiet_slice():
    w = Wait(100.0 + 5 * WAIT_SLICE_SLOW, FAST)
    looks, slept = run(w, growing(0))
    assert w.stopped is True and looks == 2 and slept == pytest.approx(WAIT_SLICE)


@pytest.mark.parametrize("rate", [FAST, SLOW])
def test_a_wait_ends_once_the_batch_has_gathered(rate):
    # the first round of a flush is a datagram or two: its rate says "slow"
    w = Wait(101.0, rate, full=3500)
    looks, slept = run(w, growing(10**6))
    assert w.stopped is False               # not stopped: the batch is there
    assert looks == 4                       # 1000, 2000, 3000, then 4000 >= 3500
    assert w.seen == 4000                   # what the pacer learns sizes from
    assert slept == pytest.approx(3 * w.slice)


def test_without_so_meminfo_the_wait_is_whole():
    w = Wait(100.0 + 5 * WAIT_SLICE, FAST)
    looks, slept = run(w, lambda i: None)
    assert (looks, w.stopped, w.seen) == (1, False, 0)
    assert slept == pytest.approx(5 * WAIT_SLICE)


def test_a_socket_that_stops_telling_leaves_the_rest_of_the_wait_whole():
    w = Wait(101.0, FAST)
    looks, slept = run(w, lambda i: 1000 * i if i < 3 else None)
    assert looks == 4 and w.stopped is False and w.seen == 2000
    assert slept == pytest.approx(1.0)


def test_a_wait_already_over_does_not_look():
    w = Wait(99.0, FAST)
    assert run(w, growing(0)) == (0, 0.0)
    assert w.seen == 0 and not w.stopped
    assert WAIT_SLICE < STREAM_WAIT


# -- the receive rounds ------------------------------------------------------------
def rounds(pacer, counts, start=100.0, step=0.005, waited=None):
    """Rounds of ``counts[i]`` datagrams ``step`` seconds apart, after
    ``pacer.begin``; returns the waits the pacer asked for after each."""
    pacer.begin(start, RCVBUF)
    now, waits = start, []
    for got in counts:
        if pacer.wait:
            w = pacer.start_wait(now)
            if waited is not None:
                run(w, waited)
        now += step
        pacer.received(got, now)
        waits.append(pacer.wait)
    return waits


def test_a_small_round_waits_for_a_batch_at_the_rate_just_seen():
    p = Pacer()
    p.window_start = 100.0
    (wait,) = rounds(p, [100], step=0.01)     # 10,000 datagrams/s: slow
    assert wait == pytest.approx(min(STREAM_WAIT_STEADY, (STREAM_BATCH - 100) / 10_000))


@pytest.mark.parametrize("got", [0, STREAM_BATCH, RECV_BATCH])
def test_an_empty_or_full_round_does_not_wait(got):
    assert rounds(Pacer(), [got]) == [0.0]


def test_a_round_at_half_the_last_rate_is_a_fast_stream_ending():
    # in a burst, 10 datagrams in 5 ms, then 10 in 20 ms: the tail goes
    # without waiting
    p = Pacer()
    p.in_burst = True
    p.window_start = 100.0
    p.begin(100.0, RCVBUF)
    p.received(10, 100.005)
    assert p.wait > 0
    p.received(10, 100.025)
    assert p.wait == 0.0


def test_a_steady_stream_waits_though_its_rate_halves():
    # 10 datagrams in 5 ms, then 10 in 20 ms, outside a burst: the rate of a
    # steady stream varies so; its next batch is waited for
    p = Pacer()
    p.window_start = 100.0
    p.begin(100.0, RCVBUF)
    p.received(10, 100.005)
    p.received(10, 100.025)
    assert p.wait == pytest.approx(min(STREAM_WAIT_STEADY, (STREAM_BATCH - 10) / 500))


def test_a_wait_that_saw_the_stream_stop_is_not_followed_by_another():
    p = Pacer()
    p.begin(100.0, RCVBUF)
    p.received(10, 100.0001)                  # 100,000/s: fast
    w = p.start_wait(100.0001)
    run(w, growing(0), now=100.0001)
    assert w.stopped
    p.received(10, 100.0002)
    assert p.wait == 0.0


@pytest.mark.parametrize("state", ["burst", "fast a moment ago", "steady"])
def test_a_steady_stream_gathers_longer_rounds_than_a_burst(state):
    # 10 datagrams every 5 ms: 2000 a second, so a batch would take half a
    # second to gather; the wait is bounded by its cap
    p = Pacer()
    p.in_burst = state == "burst"
    p.window_start = 100.0
    if state == "fast a moment ago":
        p.window_rate = 2 * FAST_RATE
    waits = rounds(p, [10, 10, 10])
    if state == "steady":
        assert waits == [STREAM_WAIT_STEADY] * 3
    else:
        # a flush that slows down near its end: its tail waits no longer
        assert waits == [STREAM_WAIT] * 3


def test_a_wait_fills_at_most_a_quarter_of_the_receive_buffer():
    p = Pacer()
    p.begin(100.0, 64 * EVENT_TRUESIZE)         # 64 events: a wait may bring 16
    p.received(10, 100.01)                      # 1000/s
    assert p.wait == pytest.approx(16 / 1000)


def test_the_wait_learns_what_a_datagram_takes_of_the_buffer():
    p = Pacer()
    p.begin(100.0, RCVBUF)
    p.received(100, 100.01)
    w = p.start_wait(100.01)
    assert w.full == STREAM_BATCH * EVENT_TRUESIZE      # the default at first
    run(w, lambda i: 1000 * 1500, now=100.01)           # the next round's 1000 datagrams
    p.received(1000, 100.02)
    assert p.truesize == 1500
    assert p.start_wait(100.02).full == STREAM_BATCH * 1500


def test_a_wait_that_did_not_look_teaches_nothing():
    p = Pacer()
    p.begin(100.0, RCVBUF)
    p.received(100, 100.01)
    p.start_wait(100.01)                # over before it began: no look
    p.received(1000, 100.02)
    assert p.truesize == EVENT_TRUESIZE


@pytest.mark.parametrize("in_burst", [True, False])
def test_a_burst_resuming_waits_at_the_burst_rate(in_burst):
    p = Pacer()
    p.in_burst = in_burst
    p.burst_rate = 100_000.0
    p.begin(100.0, RCVBUF)
    p.received(1, 100.001)
    w = p.start_wait(100.001)
    if in_burst:
        # one datagram in a moment says nothing of a flush's rate
        assert p.burst_rate == 100_000.0 and w.fast
    else:
        assert p.burst_rate == pytest.approx(1000.0) and not w.fast


def test_only_the_first_round_takes_the_burst_rate():
    p = Pacer()
    p.in_burst = True
    p.burst_rate = 100_000.0
    p.begin(100.0, RCVBUF)
    p.received(1, 100.001)
    p.received(10, 100.011)
    assert p.burst_rate == pytest.approx(1000.0)


@pytest.mark.parametrize("before", [0, 10_000])
def test_the_stream_is_fast_by_its_rate_over_a_window(before):
    # a window closing with `before` datagrams received in it, and 100 more
    p = Pacer()
    p.window_start = 100.0
    p.begin(100.0, RCVBUF)
    if before:
        p.received(before, 100.0 + FAST_WINDOW / 2)
    p.received(100, 100.0 + FAST_WINDOW)
    assert p.window_count == 0 and p.window_start == 100.0 + FAST_WINDOW
    if before:
        assert p.window_rate >= FAST_RATE
    else:
        assert p.window_rate < FAST_RATE


def test_a_burst_that_slowed_to_a_steady_stream_ends():
    # in a burst (a few thousand timed-out connections at once, say), then a
    # window of 0.2 s brings 100 datagrams: the burst is over, waits grow
    p = Pacer()
    p.in_burst = True
    p.window_start = 100.0
    (wait,) = rounds(p, [100], step=FAST_WINDOW)
    assert p.window_rate < FAST_RATE / 2 and p.in_burst is False
    assert wait > STREAM_WAIT


def test_a_full_round_after_a_quiet_spell_begins_a_burst_it_does_not_end():
    p = Pacer()
    p.window_start = 90.0                       # nothing for 10 s
    rounds(p, [STREAM_BATCH, 0])
    assert p.in_burst is True


def test_a_stream_never_found_empty_goes_back_to_the_loop():
    # rounds of 10 datagrams, always more: the receive call ends once the
    # next wait would pass RECEIVE_SPAN
    p = Pacer()
    p.begin(100.0, RCVBUF)
    now, taken = 100.0, 0
    while not (p.wait and p.spent()) and taken < 1000:
        now += p.wait + 0.001
        p.received(10, now)
        taken += 1
    assert now - 100.0 <= RECEIVE_SPAN < now + p.wait - 100.0
    assert 2 <= taken < 64


# -- exports, quiet and the loop's timeout ---------------------------------------
def test_in_a_burst_the_flows_go_before_the_wait():
    p = Pacer()
    p.in_burst = True
    p.exported(100.0)
    assert p.export_before_wait(100.0)          # STREAM_FLUSH alone would not


def test_a_trickle_is_exported_every_stream_flush_not_at_every_wait():
    p = Pacer()
    p.exported(100.0)
    rounds(p, [10, 10])
    assert p.in_burst is False
    assert not p.export_before_wait(100.0 + STREAM_FLUSH / 2)
    assert p.export_before_wait(100.0 + 1.01 * STREAM_FLUSH)


def test_a_flush_that_found_nothing_holds_no_stream_back():
    # the periodic flush ran just now with nothing to send: the first flows
    # of a stream starting then go at its first wait, not STREAM_FLUSH later
    p = Pacer()
    p.flushed()
    assert p.export_before_wait(100.0)


def test_a_stream_batch_since_the_last_flush_is_a_burst():
    p = Pacer()
    p.window_start = 100.0
    rounds(p, [STREAM_BATCH // 2, STREAM_BATCH // 2 - 1])
    assert p.in_burst is False
    p.flushed()
    rounds(p, [STREAM_BATCH // 2])
    assert p.in_burst is False
    rounds(p, [STREAM_BATCH // 2])
    assert p.in_burst is True


def test_a_threshold_flush_is_a_burst():
    p = Pacer()
    p.threshold()
    assert p.in_burst


def test_a_burst_ends_once_netlink_was_quiet_for_burst_quiet():
    p = Pacer()
    p.in_burst = True
    p.empty(100.0)
    p.quiet_for(100.0 + BURST_QUIET / 2)
    assert p.in_burst
    p.idle(100.0 + BURST_QUIET / 2)             # quiet since 100.0 still
    p.quiet_for(100.0 + 1.01 * BURST_QUIET)
    assert not p.in_burst


def test_events_end_the_quiet():
    p = Pacer()
    p.empty(100.0)
    p.events()
    p.idle(101.0)
    assert p.quiet_from == 101.0 and not p.reap_due(101.0)
    assert p.reap_due(101.0 + 1.01 * REAP_QUIET)


def test_the_loop_timeout_in_a_burst_and_with_removals_pending():
    p = Pacer()
    assert p.timeout(1.0, 100.0, pending=True, reap_pending=False) == 1.0
    p.in_burst = True
    assert p.timeout(1.0, 100.0, pending=True, reap_pending=False) == 0.0
    p.empty(100.0)
    assert p.timeout(1.0, 100.01, pending=False, reap_pending=False) == pytest.approx(
        BURST_QUIET - 0.01)
    assert p.timeout(1.0, 100.0, pending=False, reap_pending=True) == pytest.approx(REAP_QUIET)
    p.in_burst = False
    p.events()                                  # not quiet: counted from now
    assert p.timeout(1.0, 200.0, pending=False, reap_pending=True) == pytest.approx(REAP_QUIET)


@pytest.mark.parametrize("rate, reap_pending, reaps", [
    (1000, 10, int(0.01 * REAP_PER_SECOND_OF_WAIT)),    # a slow stream's wait is idle time
    (10 * REAP_STREAM_RATE, 10, 0),                      # a fast one's is the kernel's
    (10 * REAP_STREAM_RATE, DEAD_MAX // 2, int(0.01 * REAP_PER_SECOND_OF_WAIT)),
])
def test_removals_in_a_wait(rate, reap_pending, reaps):
    p = Pacer()
    p.begin(100.0, RCVBUF)
    p.received(10, 100.0 + 10 / rate)
    p.wait = 0.01
    assert p.reaps_in_wait(reap_pending) == reaps


def test_a_short_wait_still_makes_some_removals():
    p = Pacer()
    p.begin(100.0, RCVBUF)
    p.wait = 1e-5
    assert p.reaps_in_wait(1) == 256


def test_an_overrun_round_goes_again_at_once():
    p = Pacer()
    p.begin(100.0, RCVBUF)
    p.received(10, 100.005)
    p.start_wait(100.005)
    p.overrun()
    assert p.wait == 0.0
