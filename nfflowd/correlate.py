"""Connections into flow records (sans-IO: every method takes ``now_ns``).

Strategy: conntrack keeps two tuples per connection, the original direction
as the initiator sent it and the reply direction as the answer arrives.  A
connection gives two flows, and each flow's post-NAT side is the other tuple
inverted: that holds for source NAT, destination NAT, both, and none
(``flows_of``; ``flows_of_block`` is the same rules over a block's arrays).

State: NEW times where the kernel does not stamp connections (purged after
``ttl``); the connections of the start-up dump, which with
``nf_conntrack_events=2`` never send DESTROY (``add_dumped``, ``reconcile``);
and the per-connection cache (``ctcache``), for overrun recovery (``resync``)
and the active timeout (``active_export``).
"""

from __future__ import annotations

from itertools import repeat

import numpy as np

from nfflowd import ctcache
from nfflowd.conntrack import EV_DESTROY, EV_NEW, CtEvent
from nfflowd.ctcache import ConnCache
from nfflowd.ctblocks import EV_BLOCK, EV_NEW_BLOCK, DestroyBlock
from nfflowd.record import (END_ACTIVE_TIMEOUT, END_LACK_OF_RESOURCES, END_OF_FLOW, ORIGINAL,
                            REPLY, Flow, FlowBatch, NatEvent, interleave)

_ICMP_PROTOS = (1, 58)
_NS_PER_MS = 1_000_000
# Flow(...) goes through NamedTuple.__new__ (keyword handling, defaults);
# tuple.__new__ with every field given is much cheaper on this hot path.
# Every call below passes all 24 fields in Flow's order (vlan: 0, conntrack
# knows no VLAN; interfaces 0 unless a lookup fills them).
_new = tuple.__new__
# A connection exported by the poller is remembered this long so that a late
# DESTROY event for it is recognised as a duplicate instead of exported twice.
_POLL_EXPORT_MEMORY_NS = 600 * 1_000_000_000


def _with_counters(ev, opk, oby, rpk, rby):
    return _new(CtEvent, (*ev[:6], opk, oby, rpk, rby, *ev[10:]))


def flows_of(ev: CtEvent, start_ns: int, end_ns: int,
             end_reason: int = END_OF_FLOW, pair=None) -> tuple[Flow, Flow]:
    """The two directional flows of one connection (original, reply).
    ``pair``: ``Interfaces.pair``, the original direction's (in_if, out_if)
    of an event (the reply's is swapped); None: zeros."""
    # Unpacking is much cheaper than NamedTuple attribute access on this path.
    _kind, fam, ct_id, _status, o, r, opk, oby, rpk, rby, _s, _e, mark, zone = ev[:14]
    ii, oi = pair(ev) if pair is not None else (0, 0)
    osrc, odst, proto, osport, odport = o
    rsrc, rdst, _proto, rsport, rdport = r
    start_ms = start_ns // _NS_PER_MS
    end_ms = end_ns // _NS_PER_MS
    if proto in _ICMP_PROTOS:
        # NetFlow convention: sport 0, dport type*256+code.  The ICMP id (which
        # NAT may rewrite) is not a port and is not exported.
        return (
            _new(Flow, (fam, proto, osrc, odst, 0, odport, rdst, rsrc, 0, odport,
                        opk, oby, start_ms, end_ms, ORIGINAL, end_reason, 0, 0, ct_id, 0, ii, oi, zone, mark)),
            _new(Flow, (fam, proto, rsrc, rdst, 0, rdport, odst, osrc, 0, rdport,
                        rpk, rby, start_ms, end_ms, REPLY, end_reason, 0, 0, ct_id, 0, oi, ii, zone, mark)),
        )
    return (
        _new(Flow, (fam, proto, osrc, odst, osport, odport, rdst, rsrc, rdport, rsport,
                    opk, oby, start_ms, end_ms, ORIGINAL, end_reason, 0, 0, ct_id, 0, ii, oi, zone, mark)),
        _new(Flow, (fam, proto, rsrc, rdst, rsport, rdport, odst, osrc, odport, osport,
                    rpk, rby, start_ms, end_ms, REPLY, end_reason, 0, 0, ct_id, 0, oi, ii, zone, mark)),
    )


def flows_of_block(b: DestroyBlock, start_ns, end_ns, end_reason: int = END_OF_FLOW,
                   interfaces=None) -> FlowBatch:
    """``flows_of`` over a block, as columns: original and reply flow of each
    row, in row order (the same rules, written for arrays; the tests compare
    both).  ``start_ns``/``end_ns``: uint64 arrays; ``interfaces``: an
    ``Interfaces`` (its ``pair_block``), None: zeros."""
    n = b.n
    icmp = np.isin(b.o_proto, _ICMP_PROTOS)
    zero = np.zeros(n, dtype=np.uint64)
    s = start_ns // np.uint64(_NS_PER_MS)
    e = end_ns // np.uint64(_NS_PER_MS)
    none = np.zeros(2 * n, dtype=np.uint64)
    if interfaces is not None:
        ii, oi = interfaces.pair_block(b)
    return FlowBatch.from_columns(
        family=interleave(b.family, b.family),
        proto=interleave(b.o_proto, b.o_proto),
        src=interleave(b.o_src, b.r_src),
        dst=interleave(b.o_dst, b.r_dst),
        # the post-NAT side: the other tuple inverted
        post_src=interleave(b.r_dst, b.o_dst),
        post_dst=interleave(b.r_src, b.o_src),
        # ICMP: sport 0, dport type*256+code, on both sides
        sport=interleave(np.where(icmp, zero, b.o_sport), np.where(icmp, zero, b.r_sport)),
        dport=interleave(b.o_dport, b.r_dport),
        post_sport=interleave(np.where(icmp, zero, b.r_dport), np.where(icmp, zero, b.o_dport)),
        post_dport=interleave(np.where(icmp, b.o_dport, b.r_sport),
                              np.where(icmp, b.r_dport, b.o_sport)),
        packets=interleave(b.o_packets, b.r_packets),
        octets=interleave(b.o_bytes, b.r_bytes),
        start_ms=interleave(s, s),
        end_ms=interleave(e, e),
        direction=interleave(np.full(n, ORIGINAL, dtype=np.uint64),
                             np.full(n, REPLY, dtype=np.uint64)),
        end_reason=np.full(2 * n, end_reason, dtype=np.uint64),
        tos=none, tcp_flags=none, conn_id=interleave(b.ct_id, b.ct_id), vlan=none,
        in_if=interleave(ii, oi) if interfaces is not None else none,
        out_if=interleave(oi, ii) if interfaces is not None else none,
        zone=interleave(b.zone, b.zone), mark=interleave(b.mark, b.mark))


def _times(event_ns, now_ns: int):
    """A block's event times (CTA_TIMESTAMP_EVENT), ``now_ns`` where
    absent; None when all are absent."""
    if not event_ns.any():
        return None
    return np.where(event_ns == 0, np.uint64(now_ns), event_ns)


def nat_event_of(ev: CtEvent, now_ns: int, created: bool) -> NatEvent | None:
    """The RFC 8158 session event of a translated connection, else None."""
    o = ev.orig
    r = ev.reply
    if o.proto in _ICMP_PROTOS:
        # A NAT log must tie a ping to its translated ICMP query id, so here
        # (unlike in flow records) the id goes where the source port would:
        # the original id, and the reply tuple's id as the translated one.
        pre = (o.src, o.dst, o.sport, o.dport)
        post = (r.dst, r.src, r.sport, o.dport)
    else:
        pre = (o.src, o.dst, o.sport, o.dport)
        post = (r.dst, r.src, r.dport, r.sport)
    if pre == post:
        return None
    return NatEvent(ev.family, o.proto, *pre, *post, now_ns // _NS_PER_MS, created, ev.ct_id)


def _key(ev: CtEvent):
    return (ev.ct_id, ev.orig)


class Correlator:
    """Turns ctnetlink events into ``Flow`` records (and NAT session events)."""

    def __init__(self, ttl: float = 604800, kernel_timestamps: bool = True,
                 nat_events: bool = False, cache: bool = True, interfaces=None):
        self.interfaces = interfaces
        self.ttl_ns = int(ttl * 1_000_000_000)
        # When the kernel stamps connections, NEW times need not be kept.
        self.kernel_timestamps = kernel_timestamps
        self.want_nat_events = nat_events
        self._new_ns: dict[int, int] = {}       # ct_id -> NEW event time
        self._dumped: dict = {}                 # key -> [event, first_seen_ns, last_seen_ns]
        self._poll_exported: dict = {}          # key -> time exported by the poller
        self._ids: set = set()                  # ct ids of both (_known_ids)
        self._ids_stale = False
        # the per-connection cache (overrun resync, active timeout); None:
        # none kept.  _live: its entries, bound once for the hot paths
        self.cache: ConnCache | None = ConnCache() if cache else None
        self._live: dict[int, bytes] | None = self.cache.entries if cache else None
        # ct ids of DESTROY events handled while a resync dump is in flight
        # (begin_sync .. resync): a connection in the dump but already ended
        # must not be adopted
        self._destroyed_during_sync: set | None = None
        self.nat_events: list[NatEvent] = []    # pending, taken by the caller
        self.counters = {
            "events_new": 0,
            "events_destroy": 0,
            "events_other": 0,         # updates, dump entries
            "connections_exported": 0,
            "exported_by_poll": 0,
            "purged_ttl": 0,
            "duplicate_destroy": 0,
            "resyncs": 0,
            "exported_by_resync": 0,     # vanished during an overrun (lack of resources)
            "adopted_by_resync": 0,      # in the table, their NEW event lost
            # NAT create events of connections whose NEW event was lost, sent
            # when a resync adopted them or with their delete at DESTROY
            "nat_creates_late": 0,
            "active_exports": 0,         # connections exported by the active timeout
        }

    @property
    def interfaces(self):
        """The ``interfaces.Interfaces`` that fills the records' in_if and
        out_if (None: zeros); may be replaced at any time (reload)."""
        return self._interfaces

    @interfaces.setter
    def interfaces(self, value) -> None:
        self._interfaces = value
        self._pair = value.pair if value is not None else None

    # -- hot path -----------------------------------------------------------
    def handle_batch(self, events, now_ns: int, out: list) -> None:
        """Every event of a batch, in order; the flows that the DESTROY events
        end are appended to ``out`` (original, then reply, per connection)."""
        new_ns = self._new_ns
        dumped = self._dumped
        poll_exported = self._poll_exported
        keep_new_times = not self.kernel_timestamps
        want_nat = self.want_nat_events
        live = self._live
        caching = live is not None
        sync_log = self._destroyed_during_sync
        pack4 = ctcache.pack4
        pack6 = ctcache.pack6
        early_lens = ctcache.EARLY
        dead = self.cache.dead if caching else ()
        revived = self.cache.revived if caching else set()
        extend = out.extend
        pair = self._pair
        exported = duplicates = new = other = late = 0
        for ev in events:
            kind = ev[0]
            if kind == EV_DESTROY:
                ct_id = ev[2]
                start = ev[10]                      # start_ns
                if new_ns:
                    remembered = new_ns.pop(ct_id, 0)
                    if not start:
                        start = remembered
                cached = None
                if live:
                    cached = live.pop(ct_id, None)
                    if revived:
                        revived.discard(ct_id)
                    if cached is not None and len(cached) in early_lens:
                        # exported early by the active timeout: the rest only
                        ev, start = self._rest(ev, cached)
                if caching and sync_log is not None:
                    # (an empty cache too: a connection whose NEW was lost
                    # must not be brought back by the dump in flight)
                    sync_log.add(ct_id)
                # no NEW event showed it (lost in an overrun), nor a dump
                unseen = caching and cached is None
                if dumped or poll_exported:
                    key = (ct_id, ev[4])            # (ct_id, orig): see _key
                    if poll_exported.pop(key, None) is not None:
                        duplicates += 1
                        continue
                    entry = dumped.pop(key, None)
                    if entry is not None:
                        unseen = False
                        if len(entry) > 3:          # exported early: the rest only
                            b = entry[3]
                            ev = _with_counters(ev, ev[6] - b[0], ev[7] - b[1],
                                                ev[8] - b[2], ev[9] - b[3])
                            start = b[4]
                        elif not start:
                            start = entry[0].start_ns or entry[1]
                end = ev[11] or ev[14] or now_ns    # stop_ns, else event_ns
                if not start:
                    start = end
                exported += 1
                if want_nat:
                    if unseen:
                        # its create event, late: at its start if known
                        late += self._late_create(ev, start)
                    nat = nat_event_of(ev, end, False)
                    if nat is not None:
                        self.nat_events.append(nat)
                extend(flows_of(ev, start, end, END_OF_FLOW, pair))
            elif kind == EV_NEW:
                new += 1
                made = ev[14] or now_ns             # event_ns: the kernel's time
                if keep_new_times:
                    new_ns[ev[2]] = made
                if caching:
                    if dead:
                        # a removal still pending could be this id's (ids are
                        # reused): reap must not take the new entry
                        revived.add(ev[2])
                    o = ev[4]
                    r = ev[5]
                    entry = (pack4 if ev[1] == 4 else pack6)(
                        o[2], o[0], o[1], o[3], o[4], r[0], r[1], r[3], r[4], made)
                    # (a zone or mark, rare, goes into the entry: pack_event)
                    live[ev[2]] = ctcache.zoned(entry, ev[13], ev[12]) if ev[12] or ev[13] \
                        else entry
                if want_nat and not (dumped and (ev[2], ev[4]) in dumped):
                    # (one in the start-up dump had its create event then)
                    nat = nat_event_of(ev, made, True)
                    if nat is not None:
                        self.nat_events.append(nat)
            elif kind == EV_BLOCK:
                self._handle_block(ev, now_ns, out)
            elif kind == EV_NEW_BLOCK:
                if want_nat:
                    # a NAT event per connection: the object way
                    self.handle_batch(ev.events(), now_ns, out)
                    continue
                new += ev.n
                ids = ev.ct_id.tolist()
                made = _times(ev.event_ns, now_ns)
                if keep_new_times:
                    new_ns.update(zip(ids, repeat(now_ns) if made is None else made.tolist()))
                if caching:
                    if dead:
                        revived.update(ids)
                    live.update(zip(ids, ctcache.pack_block(
                        ev, now_ns if made is None else made)))
            else:
                other += 1
        c = self.counters
        c["events_new"] += new
        c["events_destroy"] += exported + duplicates
        c["events_other"] += other
        if exported:
            self.counters["connections_exported"] += exported
        if duplicates:
            self.counters["duplicate_destroy"] += duplicates
        if late:
            self.counters["nat_creates_late"] += late

    def _late_create(self, ev, time_ns: int) -> int:
        """The NAT create event of a connection whose NEW event was lost
        (found by a resync, or by its DESTROY); returns 1 if it has one."""
        nat = nat_event_of(ev, time_ns, True)
        if nat is None:
            return 0
        self.nat_events.append(nat)
        return 1

    def _known_ids(self) -> set:
        """The conntrack ids among the keys of ``_dumped`` and
        ``_poll_exported`` (rebuilt after they change)."""
        if self._ids_stale:
            self._ids = {k[0] for k in self._dumped}
            self._ids.update(k[0] for k in self._poll_exported)
            self._ids_stale = False
        return self._ids

    def _handle_block(self, b, now_ns: int, out) -> None:
        """A ``ctblocks.DestroyBlock``: what ``handle_batch`` does for each of
        its DESTROY events, as columns.  Rows that need per-connection work
        beyond the cache pop (exported early by the active timeout, a key of
        the start-up dump or of a poll export) go through the object path in
        their place, with the state they would have found."""
        n = b.n
        ids32 = b.ct_id.astype(np.uint32)                # conntrack ids are 32-bit
        srt = np.sort(ids32)
        if (srt[1:] == srt[:-1]).any():
            # a connection twice in one block: sequential, the object way
            self.handle_batch(b.events(), now_ns, out)
            return
        start = b.start_ns
        special: dict = {}                      # row -> (live entry, NEW time) to restore
        new_ns = self._new_ns
        live = self._live
        # the ids as ints, for the per-connection state beyond the cache's
        # deferred removal (none in a burst of connections made while running)
        # With NAT events the block's cache entries go at once (not left to
        # ``reap``): a connection with none was never seen (its NEW lost in
        # an overrun) and gets its create event with its delete.
        want_nat = self.want_nat_events and live is not None
        ids = (b.ct_id.tolist()
               if want_nat or new_ns or self._dumped or self._poll_exported
               or (live is not None and self._destroyed_during_sync is not None)
               else None)
        remembered = None
        if new_ns:
            pop = new_ns.pop
            remembered = [pop(c, 0) for c in ids]
            start = np.where(start == 0, np.array(remembered, dtype=np.uint64), start)
        popped = None                           # row -> its entry, with NAT events
        if want_nat:
            pop = live.pop
            popped = [pop(c, None) for c in ids]
            for i, e in enumerate(popped):
                if e is not None and ctcache.is_early(e):
                    special[i] = e
        elif live:
            # Only entries that may carry a base (exported early) are looked
            # at now; the others are removed later by ``reap`` (a pop from a
            # large dict misses the CPU caches a few times: bench/README.md).
            early = self.cache.early_ids
            if len(early):
                hit = early[np.minimum(np.searchsorted(early, ids32), len(early) - 1)] == ids32
                if hit.any():
                    if ids is None:
                        ids = b.ct_id.tolist()
                    for i in np.flatnonzero(hit).tolist():
                        e = live.pop(ids[i], None)
                        if e is not None and ctcache.is_early(e):
                            special[i] = e
        if live is not None and self._destroyed_during_sync is not None:
            self._destroyed_during_sync.update(ids)
        if self._dumped or self._poll_exported:
            known = self._known_ids()
            for i, c in enumerate(ids):
                if c in known and i not in special:
                    special[i] = popped[i] if popped is not None else None
        revived = self.cache.revived if live is not None else ()
        if live and revived:
            # connections made again under an id whose removal is pending:
            # the object path pops their entries at once
            if len(revived) <= 64:
                again = np.isin(b.ct_id, np.fromiter(revived, dtype=np.uint64,
                                                     count=len(revived)))
                rows = np.flatnonzero(again).tolist()
            else:
                rows = [i for i, c in enumerate(ids if ids is not None else b.ct_id.tolist())
                        if c in revived]
            for i in rows:
                special.setdefault(i, popped[i] if popped is not None else None)
        if live and popped is None:
            # the object path pops the special rows' entries itself
            self.cache.defer(b.ct_id if not special else np.delete(b.ct_id, list(special)))
        stop = b.stop_ns
        made = _times(b.event_ns, now_ns)
        end = np.where(stop == 0, np.uint64(now_ns) if made is None else made, stop)
        start = np.where(start == 0, end, start)
        add_block = getattr(out, "add_block", None)

        def emit(lo, hi):
            if lo >= hi:
                return
            sub = b if (lo == 0 and hi == n) else b.take(slice(lo, hi))
            cols = flows_of_block(sub, start[lo:hi], end[lo:hi], END_OF_FLOW,
                                  self._interfaces)
            if self.want_nat_events:
                late = 0
                for k, ev, s, e in zip(range(lo, hi), sub.events(), start[lo:hi].tolist(),
                                       end[lo:hi].tolist()):
                    if popped is not None and popped[k] is None:
                        late += self._late_create(ev, s)
                    nat = nat_event_of(ev, e, False)
                    if nat is not None:
                        self.nat_events.append(nat)
                self.counters["nat_creates_late"] += late
            if add_block is not None:
                add_block(cols)
            else:
                out.extend(cols.flows())
            c = self.counters
            c["events_destroy"] += hi - lo
            c["connections_exported"] += hi - lo

        if not special:
            emit(0, n)
            return
        # each run of consecutive special rows goes through the object path
        # in one call (the ids of a block are distinct: the rows of a run do
        # not touch each other's state)
        lo = 0
        rows = sorted(special)
        k = 0
        while k < len(rows):
            i = j = rows[k]
            while k < len(rows) and rows[k] == j:
                e = special[j]
                if e is not None:
                    live[ids[j]] = e
                if remembered is not None and remembered[j]:
                    new_ns[ids[j]] = remembered[j]
                j += 1
                k += 1
            emit(lo, i)
            self.handle_batch(b.take(slice(i, j)).events(), now_ns, out)
            lo = j
        emit(lo, n)

    def handle(self, ev: CtEvent, now_ns: int) -> list[Flow]:
        """One event in; the flows it ends (none for NEW/UPDATE) out."""
        out: list[Flow] = []
        self.handle_batch((ev,), now_ns, out)
        return out

    def state(self) -> tuple:
        """What the correlator holds, as copies, to compare two of them:
        (counters, cache entries, NEW times, start-up connections, poll
        exports, NAT events pending)."""
        return (dict(self.counters), dict(self._live or {}), dict(self._new_ns),
                dict(self._dumped), dict(self._poll_exported), list(self.nat_events))

    def take_nat_events(self) -> list[NatEvent]:
        events, self.nat_events = self.nat_events, []
        return events

    # -- connections older than the daemon -------------------------------------
    def add_dumped(self, events, now_ns: int) -> int:
        """Learn the table as it was at start.  Returns how many were added.
        With NAT events, each translated one gets its create event (at its
        kernel start time if stamped, else ``now_ns``), as a connection made
        while running does: its delete comes when it ends."""
        added = 0
        for ev in events:
            key = _key(ev)
            if key not in self._dumped:
                self._dumped[key] = [ev, now_ns, now_ns]
                self._ids_stale = True
                added += 1
                if self.want_nat_events:
                    nat = nat_event_of(ev, ev.start_ns or now_ns, True)
                    if nat is not None:
                        self.nat_events.append(nat)
        return added

    @property
    def dumped_pending(self) -> int:
        """Connections known only from the start-up dump that have not ended."""
        return len(self._dumped)

    def reconcile(self, table, now_ns: int) -> list[Flow]:
        """Compare a fresh table dump with the connections known from the
        start-up dump: refresh those still there, export those gone."""
        present = {}
        for ev in table:
            present[_key(ev)] = ev
        out: list[Flow] = []
        for key in list(self._dumped):
            entry = self._dumped[key]
            ev = present.get(key)
            if ev is not None:
                entry[0] = ev
                entry[2] = now_ns
                continue
            del self._dumped[key]
            last, first_seen, last_seen = entry[:3]
            start = last.start_ns or first_seen
            if len(entry) > 3:                  # exported early: the rest only
                b = entry[3]
                last = _with_counters(last, last[6] - b[0], last[7] - b[1],
                                      last[8] - b[2], last[9] - b[3])
                start = b[4]
            out.extend(flows_of(last, start, max(last_seen, start), END_OF_FLOW, self._pair))
            self._poll_exported[key] = now_ns
            self._ids_stale = True
            self.counters["connections_exported"] += 1
            self.counters["exported_by_poll"] += 1
            if self.want_nat_events:
                nat = nat_event_of(last, last_seen, False)
                if nat is not None:
                    self.nat_events.append(nat)
        return out

    # -- the live cache: overrun recovery and active timeout ----------------------
    @staticmethod
    def _rest(ev, entry: bytes):
        """A DESTROY of a connection exported early: (event carrying the
        counters not yet exported, start = time of the last export)."""
        b = ctcache.base_of(entry)
        return (_with_counters(ev, ev[6] - b[0], ev[7] - b[1], ev[8] - b[2], ev[9] - b[3]),
                b[4])

    @property
    def cached(self) -> int:
        """Entries in the live cache, those of ended connections still to be
        removed (``reap_pending``) included."""
        return len(self.cache) if self.cache is not None else 0

    @property
    def reap_pending(self) -> int:
        """Ended connections whose cache entries are still to be removed."""
        return self.cache.reap_pending if self.cache is not None else 0

    def reap(self, limit: int | None = None) -> int:
        """Remove the cache entries of connections DESTROY blocks have ended,
        oldest first, at most about ``limit`` of them (all by default).  The
        daemon calls it when netlink has nothing queued; a resync or an active
        export calls it first.  Returns how many ids were done."""
        return self.cache.reap(limit) if self.cache is not None else 0

    def begin_sync(self) -> None:
        """Call before dumping the table for ``resync``/``active_export``: from
        now until then, ended connections are noted so that the dump (which may
        still show them) does not bring them back."""
        self._destroyed_during_sync = set()

    def abandon_sync(self) -> None:
        """The dump ``begin_sync`` announced failed: stop noting ended
        connections."""
        self._destroyed_during_sync = None

    def resync(self, table, now_ns: int, dump_ns: int) -> list[Flow]:
        """After an overrun: compare a dump (begun at ``dump_ns``, after
        ``begin_sync``) with the cache.  Cached connections that are not in
        the table any more ended while events were lost: they are exported
        (last counters seen, reason lack of resources).  Table entries the
        cache does not know (their NEW was lost) are adopted, and with NAT
        events get their create event then; a DESTROY of a connection
        neither a NEW event nor a dump showed gets its create event just
        before its delete (so with NAT events a DESTROY block removes its
        cache entries at once).  A resync export is remembered as a poll
        export is, so that a DESTROY the kernel redelivers later (reliable
        delivery, NETLINK_BROADCAST_ERROR) counts as a duplicate.  The
        start-up connections are reconciled as by ``reconcile``."""
        out = self._sync(table, now_ns, dump_ns, active=False)
        self.counters["resyncs"] += 1
        return out

    def active_export(self, table, now_ns: int, dump_ns: int) -> list[Flow]:
        """Active timeout: for every open connection in ``table`` (a dump
        begun at ``dump_ns``, after ``begin_sync``), the counters accumulated
        since its previous export, reason active timeout.  Connections that
        are idle since then give no record.  What was exported is kept in
        the cache entry, so the DESTROY record carries only the rest.
        Deltas rather than a counter-zeroing dump (CTRZERO), which would
        change what every other reader of the kernel's counters sees
        (``conntrack -L``, nft, other listeners, the DESTROY event itself).
        Also does what ``resync`` does (a DESTROY lost without an overrun is
        caught here)."""
        return self._sync(table, now_ns, dump_ns, active=True)

    def _sync(self, table, now_ns: int, dump_ns: int, active: bool) -> list[Flow]:
        self.reap()
        live = self._live
        destroyed = self._destroyed_during_sync or set()
        self._destroyed_during_sync = None
        out: list[Flow] = []
        if live is None:
            return self.reconcile(table, now_ns)
        dumped = self._dumped
        present = set()
        adopted = early = late = 0
        for ev in table:
            ct_id = ev[2]
            present.add(ct_id)
            entry = live.get(ct_id)
            if entry is None:
                key = (ct_id, ev[4])
                d = dumped.get(key)
                if d is not None:
                    if active and self._active_dumped(d, ev, now_ns, out):
                        early += 1
                    continue
                if ct_id in destroyed or key in self._poll_exported:
                    continue                    # ended meanwhile: not to bring back
                new_ns = ev[10] or now_ns
                entry = ctcache.pack_event(ev, new_ns)
                live[ct_id] = entry
                adopted += 1
                if self.want_nat_events:
                    # its NEW event was lost: its create event now, at the
                    # kernel's start time if stamped, else as found
                    late += self._late_create(ev, new_ns)
                # fall through: an adopted connection's counters so far are
                # exported now by the active timeout too
                if not active:
                    continue
            if active:
                if self._active_live(ct_id, entry, ev, now_ns, out):
                    early += 1
        # vanished: cached, made before the dump began, not in it; in id
        # order, not the cache's (which depends on when entries were removed:
        # at once, or later by reap)
        vanished = 0
        for ct_id in sorted([c for c in live if c not in present]):
            if ct_id in destroyed:
                continue
            entry = live[ct_id]
            ev, new_ns, base = ctcache.entry_event(ct_id, entry)
            if new_ns >= dump_ns:
                continue                        # NEW after the dump began
            del live[ct_id]
            start = base[4] if base else new_ns
            end = max(dump_ns, start)
            out.extend(flows_of(ev, start, end, END_LACK_OF_RESOURCES, self._pair))
            self._poll_exported[(ct_id, ev[4])] = now_ns
            self._ids_stale = True
            vanished += 1
            if self.want_nat_events:
                nat = nat_event_of(ev, end, False)
                if nat is not None:
                    self.nat_events.append(nat)
        self.cache.note_early()
        c = self.counters
        c["exported_by_resync"] += vanished
        c["connections_exported"] += vanished
        c["adopted_by_resync"] += adopted
        c["nat_creates_late"] += late
        c["active_exports"] += early
        out.extend(self.reconcile(table, now_ns))
        return out

    def _active_live(self, ct_id, entry, ev, now_ns, out) -> bool:
        _family, head, v, b = ctcache.unpack(entry)
        if b is not None:
            start = b[4]
        else:
            b = (0, 0, 0, 0)
            start = ev[10] or v[9]
        opk, oby, rpk, rby = ev[6:10]
        if opk == b[0] and rpk == b[2]:
            return False                        # idle since the last export
        delta = _with_counters(ev, opk - b[0], oby - b[1], rpk - b[2], rby - b[3])
        out.extend(flows_of(delta, start, max(now_ns, start), END_ACTIVE_TIMEOUT, self._pair))
        self._live[ct_id] = ctcache.with_base(entry, head, opk, oby, rpk, rby, now_ns)
        return True

    def _active_dumped(self, d: list, ev, now_ns, out) -> bool:
        if len(d) > 3:
            b = d[3]
            start = b[4]
        else:
            b = (0, 0, 0, 0)
            start = ev[10] or d[1]
        d[0] = ev
        d[2] = now_ns
        opk, oby, rpk, rby = ev[6:10]
        if opk == b[0] and rpk == b[2]:
            return False
        delta = _with_counters(ev, opk - b[0], oby - b[1], rpk - b[2], rby - b[3])
        out.extend(flows_of(delta, start, max(now_ns, start), END_ACTIVE_TIMEOUT, self._pair))
        if len(d) > 3:
            d[3] = (opk, oby, rpk, rby, now_ns)
        else:
            d.append((opk, oby, rpk, rby, now_ns))
        return True

    # -- housekeeping -----------------------------------------------------------
    def purge(self, now_ns: int) -> int:
        """Forget NEW times older than the TTL; returns how many."""
        limit = now_ns - self.ttl_ns
        stale = [cid for cid, t in self._new_ns.items() if t < limit]
        for cid in stale:
            del self._new_ns[cid]
        old = now_ns - _POLL_EXPORT_MEMORY_NS
        for key in [k for k, t in self._poll_exported.items() if t < old]:
            del self._poll_exported[key]
            self._ids_stale = True
        self.counters["purged_ttl"] += len(stale)
        return len(stale)

    @property
    def tracked(self) -> int:
        """Connections for which state is held (NEW times kept)."""
        return len(self._new_ns)
