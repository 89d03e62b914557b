"""Ingress and egress interface of a connection, worked out in user space.

Conntrack does not say which interfaces a connection crossed.  Three ways to
find out (``Interfaces(method=...)``):

- ``route``: an in-process copy of the namespace's routes, kept current from
  rtnetlink messages (``io/rtnl`` parses them into the plain ``Link``,
  ``Address`` and ``Route`` tuples below).  Ingress of the original direction
  is the interface of the route back to its source, egress the interface of
  the route to the reply's source (the destination after DNAT).  Local
  addresses (the local table's local and broadcast routes, and the
  addresses) come first, as the kernel's local rule does, and give 0: a
  connection the host opens has no ingress, one it accepts no egress.  Then
  a longest-prefix match in the main table; a multipath route counts as its
  first nexthop.  Other tables (policy routing, VRFs) are not consulted.
- ``mark`` / ``zone``: nft rules set a ct mark (or put connections in a
  conntrack zone) per interface; a configured map turns the value into the
  original direction's (ingress, egress), given as interface names (resolved
  through the links table) or indexes.
- no ``Interfaces`` at all (``none``): zeros, as before.

The reply record's pair is the original's swapped (``pair``).  Lookups are
answered from a dict address -> ifindex cleared whenever a route or address
changes; ``pair_block`` is the same over a ``ctblocks.DestroyBlock``'s
columns (per prefix length present: mask, then ``np.searchsorted``).
Sans-IO: no sockets, no clock.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

METHODS = ("route", "mark", "zone", "none")

# rtnetlink numbers (linux/rtnetlink.h)
RT_TABLE_MAIN = 254
RT_TABLE_LOCAL = 255
RTN_UNICAST = 1
RTN_LOCAL = 2
RTN_BROADCAST = 3

# the address -> ifindex cache is dropped whole beyond this many entries
CACHE_MAX = 1 << 20


class Link(NamedTuple):
    """An interface appeared or changed (``add``), or went.  ``up``: its
    administrative state (IFF_UP)."""
    add: bool
    index: int
    name: str
    description: str = ""       # IFLA_IFALIAS
    up: bool = True


class Address(NamedTuple):
    """An address of this host (``address``: packed, 4 or 16 bytes)."""
    add: bool
    family: int                 # 4 or 6
    index: int
    address: bytes


class Route(NamedTuple):
    """A route of any table.  ``dst``: the packed prefix (4 or 16 bytes);
    ``oif``: the output interface, the first nexthop's for a multipath
    route, 0 for none; ``replace``: it replaces the route with the same
    destination, length, tos and priority (NLM_F_REPLACE)."""
    add: bool
    family: int
    table: int
    kind: int                   # RTN_*
    dst: bytes
    dst_len: int
    oif: int
    priority: int = 0
    tos: int = 0
    replace: bool = False


class Reset(NamedTuple):
    """Forget every link, address and route (a fresh dump follows)."""


_BITS = {4: 32, 6: 128}


def _mask(family: int, plen: int) -> int:
    bits = _BITS[family]
    return ((1 << plen) - 1) << (bits - plen) if plen else 0


class _Table:
    """Prefixes of one family -> value; longest prefix wins."""

    def __init__(self, family: int, entries: dict):
        # entries: (prefix int, plen) -> value
        self.family = family
        by_len: dict[int, dict[int, int]] = {}
        for (net, plen), value in entries.items():
            by_len.setdefault(plen, {})[net & _mask(family, plen)] = value
        self.lengths = sorted(by_len, reverse=True)
        self.scalar = [(_mask(family, p), by_len[p]) for p in self.lengths]
        # for the block form: per length, sorted prefixes and their values
        self.arrays = []
        for p in self.lengths:
            nets = sorted(by_len[p])
            values = np.array([by_len[p][k] for k in nets], dtype=np.uint64)
            if family == 4:
                keys = np.array(nets, dtype=np.uint32)
                mask = np.uint32(_mask(4, p))
            else:
                keys = np.array([k.to_bytes(16, "big") for k in nets], dtype="S16")
                mask = np.frombuffer(_mask(6, p).to_bytes(16, "big"), dtype=np.uint8)
            self.arrays.append((mask, keys, values))

    def get(self, a: int):
        """The value of the longest prefix holding ``a``, or None."""
        for mask, nets in self.scalar:
            v = nets.get(a & mask)
            if v is not None:
                return v
        return None

    def get_many(self, keys):
        """``get`` over an array (IPv4: uint32; IPv6: (n, 16) uint8): (values
        uint64, found bool)."""
        n = len(keys)
        values = np.zeros(n, dtype=np.uint64)
        found = np.zeros(n, dtype=bool)
        for mask, nets, vals in self.arrays:
            if found.all():
                break
            if self.family == 4:
                masked = keys & mask
            else:
                masked = np.ascontiguousarray(keys & mask).view("S16").ravel()
            i = np.searchsorted(nets, masked)
            i[i == len(nets)] = 0
            hit = (nets[i] == masked) & ~found
            values[hit] = vals[i[hit]]
            found |= hit
        return values, found


class Interfaces:
    """The interface pair of a connection (see the module's docstring).

    ``update(messages)`` applies ``Link``/``Address``/``Route``/``Reset``
    messages and returns whether the links changed; ``pair(ev)`` is the
    original direction's (in_if, out_if) of a ``CtEvent``; ``pair_block``
    the same as two uint64 arrays; ``links`` the interfaces as
    ``{ifindex: (name, description)}``; ``sizes()`` what is held."""

    def __init__(self, method: str = "route", mapping=None):
        self.links: dict[int, tuple[str, str]] = {}
        self._addrs: dict = {}          # (family, index, address) -> True
        self._routes: dict = {}         # (family, table, dst int, plen, tos, priority, oif) -> kind
        self._cache: dict[bytes, int] = {}
        self._dirty = True
        self._tables: dict = {}         # family -> (local _Table, main _Table)
        self._resolved: dict | None = None
        self.configure(method, mapping)

    # -- configuration ---------------------------------------------------------
    def configure(self, method: str, mapping=None) -> None:
        """The method, and for ``mark``/``zone`` the map: value ->
        (ingress, egress), each an interface name or index."""
        if method not in METHODS:
            raise ValueError(f"unknown interfaces method {method!r} (expected one of: "
                             f"{', '.join(METHODS)})")
        self.method = method
        self.mapping = dict(mapping or {})
        self._resolved = None
        self.pair = {"route": self._pair_route, "mark": self._pair_mark,
                     "zone": self._pair_zone, "none": self._pair_none}[method]

    # -- messages ----------------------------------------------------------------
    def update(self, messages) -> bool:
        """Apply rtnetlink messages, in order; True if the links changed."""
        links_changed = False
        for m in messages:
            if isinstance(m, Route):
                self._route(m)
            elif isinstance(m, Link):
                if not m.add or not m.up:
                    self._link_gone(m.index, m.add)
                if m.add:
                    new = (m.name, m.description)
                    if self.links.get(m.index) != new:
                        self.links[m.index] = new
                        links_changed = True
                elif self.links.pop(m.index, None) is not None:
                    links_changed = True
            elif isinstance(m, Address):
                key = (m.family, m.index, m.address)
                if m.add:
                    self._addrs[key] = True
                else:
                    self._addrs.pop(key, None)
                self._dirty = True
            elif isinstance(m, Reset):
                if self.links:
                    links_changed = True
                self.links.clear()
                self._addrs.clear()
                self._routes.clear()
                self._dirty = True
            else:
                raise TypeError(f"not an rtnetlink message: {m!r}")
        if self._dirty:
            self._cache.clear()         # (tables rebuilt at the next miss)
        if links_changed:
            self._resolved = None
        return links_changed

    def _link_gone(self, index: int, down_only: bool) -> None:
        """The kernel drops a link's IPv4 routes without a message when the
        link goes down or away; every route and address of a link that
        went."""
        routes = self._routes
        gone = [k for k in routes if k[6] == index and (k[0] == 4 or not down_only)]
        for k in gone:
            del routes[k]
        if not down_only:
            for k in [k for k in self._addrs if k[1] == index]:
                del self._addrs[k]
        self._dirty = True

    def _route(self, m: Route) -> None:
        if m.table not in (RT_TABLE_MAIN, RT_TABLE_LOCAL) or m.tos:
            return      # other tables: policy routing, not ours; tos routes match by TOS
        net = int.from_bytes(m.dst, "big") if m.dst else 0
        head = (m.family, m.table, net, m.dst_len, m.tos, m.priority)
        routes = self._routes
        if not m.add or m.replace:
            if m.add or (*head, m.oif) not in routes:
                for k in [k for k in routes if k[:6] == head]:
                    del routes[k]
            else:
                del routes[(*head, m.oif)]
        if m.add:
            routes[(*head, m.oif)] = m.kind
        self._dirty = True

    def _rebuild(self) -> None:
        local = {4: {}, 6: {}}
        main = {4: {}, 6: {}}
        for (family, _idx, address) in self._addrs:
            local[family][(int.from_bytes(address, "big"), _BITS[family])] = 0
        # (sorted: of two routes to one prefix the lower priority wins)
        for (family, table, net, plen, _tos, _prio, oif), kind in sorted(
                self._routes.items(), key=lambda kv: -kv[0][5]):
            if table == RT_TABLE_LOCAL or kind == RTN_LOCAL:
                if kind in (RTN_LOCAL, RTN_BROADCAST):
                    local[family][(net, plen)] = 0
            elif table == RT_TABLE_MAIN:
                # unicast: its interface; blackhole, unreachable, ...: none
                main[family][(net, plen)] = oif if kind == RTN_UNICAST else 0
        self._tables = {f: (_Table(f, local[f]), _Table(f, main[f])) for f in (4, 6)}
        self._cache.clear()
        self._dirty = False

    # -- lookups -----------------------------------------------------------------
    def lookup(self, address: bytes) -> int:
        """The interface of the route to ``address`` (packed, 4 or 16
        bytes); 0 for a local address or none."""
        i = self._cache.get(address)
        if i is None:
            i = self._miss(address)
        return i

    def _miss(self, address: bytes) -> int:
        if self._dirty:
            self._rebuild()
        family = 4 if len(address) == 4 else 6
        local, main = self._tables[family]
        a = int.from_bytes(address, "big")
        if local.get(a) is not None:
            i = 0
        else:
            i = main.get(a) or 0
        cache = self._cache
        if len(cache) >= CACHE_MAX:
            cache.clear()
        cache[address] = i
        return i

    def _pair_route(self, ev) -> tuple[int, int]:
        cache = self._cache
        a = ev[4][0]                      # orig.src
        i = cache.get(a)
        if i is None:
            i = self._miss(a)
        b = ev[5][0]                      # reply.src: the destination after DNAT
        o = cache.get(b)
        if o is None:
            o = self._miss(b)
        return i, o

    def _pair_none(self, ev) -> tuple[int, int]:
        return 0, 0

    def _map(self) -> dict:
        if self._resolved is None:
            by_name = {name: idx for idx, (name, _d) in self.links.items()}
            self._resolved = {v: (self._index(a, by_name), self._index(b, by_name))
                              for v, (a, b) in self.mapping.items()}
        return self._resolved

    @staticmethod
    def _index(x, by_name) -> int:
        return x if isinstance(x, int) else by_name.get(x, 0)

    def _pair_mark(self, ev) -> tuple[int, int]:
        return self._map().get(ev[12], (0, 0))

    def _pair_zone(self, ev) -> tuple[int, int]:
        return self._map().get(ev[13], (0, 0))

    def pair_block(self, b) -> tuple[np.ndarray, np.ndarray]:
        """``pair`` over a ``DestroyBlock``: (in_if, out_if), uint64 arrays of
        its original directions."""
        n = b.n
        if self.method == "route":
            return self.lookup_many(b.family, b.o_src), self.lookup_many(b.family, b.r_src)
        if self.method == "none":
            z = np.zeros(n, dtype=np.uint64)
            return z, z.copy()
        values = b.mark if self.method == "mark" else b.zone
        uniq, inv = np.unique(values, return_inverse=True)
        m = self._map()
        pairs = np.array([m.get(v, (0, 0)) for v in uniq.tolist()],
                         dtype=np.uint64).reshape(len(uniq), 2)
        return pairs[inv.ravel(), 0], pairs[inv.ravel(), 1]

    def lookup_many(self, family, addrs) -> np.ndarray:
        """``lookup`` over columns: ``family`` (4 or 6 per row) and
        ``addrs`` ((n, 16) uint8, IPv4 in the first 4 bytes)."""
        if self._dirty:
            self._rebuild()
        out = np.zeros(len(family), dtype=np.uint64)
        for fam in (4, 6):
            rows = np.flatnonzero(family == fam)
            if not len(rows):
                continue
            if fam == 4:
                keys = np.ascontiguousarray(addrs[rows, :4]).view(">u4").ravel().astype(np.uint32)
            else:
                keys = addrs[rows]
            local, main = self._tables[fam]
            _v, is_local = local.get_many(keys)
            values, _found = main.get_many(keys)
            values[is_local] = 0
            out[rows] = values
        return out

    def sizes(self) -> dict:
        """What is held, for ``check`` and the logs."""
        routes = {4: 0, 6: 0}
        local = 0
        for k, kind in self._routes.items():
            if k[1] == RT_TABLE_MAIN and kind != RTN_LOCAL:
                routes[k[0]] += 1
            else:
                local += 1
        return {"links": len(self.links), "routes4": routes[4], "routes6": routes[6],
                "local": local + len(self._addrs), "cached": len(self._cache)}
