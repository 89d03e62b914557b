"""The bytes on the wire, pinned: a batch of records in, the expected
datagrams out, for every encoder (NetFlow v5 through the flow-tools view,
NetFlow v9, IPFIX, IPFIX biflow), table-driven.

The expected values were taken from the encoders before they were made one
columnar path (#16); any change to them is a change of what goes on the wire.
Small outputs are pinned as hex, larger ones (several datagrams) as their
sizes and the SHA-256 of their bytes.  The tests that read the datagrams back
with independent readers live with each encoder's tests.

Regenerate (only when a change of the wire format is intended):
``python tests/test_wire.py``, then paste the printed table.
"""

from __future__ import annotations

import hashlib
import ipaddress

import pytest

from nfflowd import flowtools
from nfflowd.biflow import BiflowIpfixEncoder
from nfflowd.ipfix import IpfixEncoder
from nfflowd.netflow5 import V5Encoder
from nfflowd.netflow9 import NetflowV9Encoder
from nfflowd.record import (END_ACTIVE_TIMEOUT, END_IDLE_TIMEOUT, END_OF_FLOW, ORIGINAL, REPLY,
                            Flow, FlowBatch, NatEvent)

T0 = 1_700_000_000_000          # epoch ms
BOOT = T0 - 3_600_000           # booted an hour before
NOW_NS = (T0 + 1234) * 1_000_000
EXADDR = "192.0.2.254"


def ip(s: str) -> bytes:
    return ipaddress.ip_address(s).packed


def fl(src, dst, sport, dport, *, proto=6, psrc=None, pdst=None, psport=None, pdport=None,
       packets=3, octets=300, start=T0 - 5000, end=T0 - 1000, direction=ORIGINAL,
       reason=END_OF_FLOW, tos=0, flags=0, conn_id=0, vlan=0, family=None, in_if=0, out_if=0,
       zone=0, mark=0) -> Flow:
    s, d = ip(src), ip(dst)
    return Flow(family or (4 if len(s) == 4 else 6), proto, s, d, sport, dport,
                ip(psrc) if psrc else s, ip(pdst) if pdst else d,
                sport if psport is None else psport, dport if pdport is None else pdport,
                packets, octets, start, end, direction, reason, tos, flags, conn_id, vlan,
                in_if, out_if, zone, mark)


def nat(src, dst, sport, dport, psrc, psport, created, proto=6, time_ms=T0 - 2000) -> NatEvent:
    s, d = ip(src), ip(dst)
    return NatEvent(4 if len(s) == 4 else 6, proto, s, d, sport, dport, ip(psrc), d, psport,
                    dport, time_ms, created, 7)


def many(n: int) -> list:
    """n records: IPv4 TCP, IPv6 UDP, IPv4 ICMP, translated or not, in turn."""
    out = []
    for i in range(n):
        k = i % 4
        if k == 0:
            out.append(fl(f"10.0.{i // 250}.{i % 250 + 1}", "198.51.100.80", 1024 + i, 80,
                          psrc="203.0.113.1", psport=30000 + i, packets=i + 1,
                          octets=60 * (i + 1), start=T0 - 9000 + i, end=T0 - 100 + i,
                          conn_id=1000 + i, tos=i % 256, flags=0x1b, in_if=2 + i % 3,
                          out_if=5))
        elif k == 1:
            out.append(fl(f"2001:db8::{i:x}", "2001:db8:1::53", 2000 + i, 53, proto=17,
                          packets=1, octets=80 + i, start=T0 - 3000, end=T0 - 3000,
                          direction=REPLY, reason=END_IDLE_TIMEOUT, zone=i % 3, mark=i))
        elif k == 2:
            out.append(fl("10.0.0.9", "198.51.100.1", 0, 8 << 8, proto=1, psrc="203.0.113.1",
                          pdport=0, psport=i, packets=2, octets=168))
        else:
            out.append(fl("198.51.100.80", "203.0.113.1", 80, 30000 + i, direction=REPLY,
                          pdst=f"10.0.0.{i % 250 + 1}", pdport=1024 + i, octets=2 ** 33 + i,
                          packets=2 ** 32 + i, reason=END_ACTIVE_TIMEOUT, in_if=5,
                          out_if=2 + i % 3))
    return out


PAIR = [fl("10.0.0.5", "198.51.100.80", 40000, 443, psrc="203.0.113.1", psport=61000,
           packets=10, octets=1500, flags=0x1b, tos=0x10, conn_id=42),
        fl("198.51.100.80", "203.0.113.1", 443, 61000, pdst="10.0.0.5", pdport=40000,
           packets=8, octets=9000, flags=0x1b, direction=REPLY, conn_id=42)]

FLOWS = {
    "nat-pair": PAIR,
    "udp-untranslated": [fl("10.1.1.1", "10.2.2.2", 5353, 53, proto=17, packets=1, octets=61)],
    "icmp4-icmp6": [fl("10.0.0.9", "198.51.100.1", 0, 8 << 8, proto=1, psrc="203.0.113.1"),
                    fl("2001:db8::9", "2001:db8:1::1", 0, 128 << 8, proto=58),
                    fl("198.51.100.1", "203.0.113.1", 0, 0, proto=1, direction=REPLY,
                       pdst="10.0.0.9")],
    "ipv6-nat66": [fl("fd00::5", "2001:db8:1::80", 40000, 443, psrc="2001:db8::1",
                      psport=50000),
                   fl("2001:db8:1::80", "2001:db8::1", 443, 50000, direction=REPLY,
                      pdst="fd00::5", pdport=40000)],
    "mixed-templates": [fl("2001:db8::1", "2001:db8::2", 1, 2), *PAIR,
                        fl("10.0.0.9", "198.51.100.1", 0, 3 << 8 | 1, proto=1),
                        fl("2001:db8::3", "2001:db8::4", 3, 4, proto=17)],
    "wide-counters": [fl("10.0.0.1", "10.0.0.2", 1, 2, packets=2 ** 40, octets=2 ** 64 - 1)],
    "times-before-boot": [fl("10.0.0.1", "10.0.0.2", 1, 2, start=BOOT - 10, end=BOOT + 10)],
    "negative-start": [fl("10.0.0.1", "10.0.0.2", 1, 2), fl("10.0.0.3", "10.0.0.4", 3, 4,
                                                             start=-1),
                       fl("10.0.0.5", "10.0.0.6", 5, 6)],
    "port-too-wide": [fl("10.0.0.1", "10.0.0.2", 70000, 2), fl("10.0.0.3", "10.0.0.4", 3, 4),
                      fl("10.0.0.5", "10.0.0.6", 5, 6, psport=70000)],
    "counter-too-wide": [fl("10.0.0.1", "10.0.0.2", 1, 2, octets=2 ** 64),
                         fl("10.0.0.3", "10.0.0.4", 3, 4, packets=-1)],
    "bad-family": [fl("10.0.0.1", "10.0.0.2", 1, 2, family=5), fl("10.0.0.3", "10.0.0.4", 3, 4)],
    # interface indexes: a NAT pair (the reply's swapped), the host's own
    # traffic (no ingress), one delivered to it (no egress), an index wider
    # than 16 bits, IPv6; zones (the v9/IPFIX zone variants) and marks (on
    # no wire)
    "interfaces": [fl("10.0.0.5", "198.51.100.80", 40000, 443, psrc="203.0.113.1",
                      psport=61000, conn_id=42, in_if=2, out_if=3),
                   fl("198.51.100.80", "203.0.113.1", 443, 61000, pdst="10.0.0.5",
                      pdport=40000, direction=REPLY, conn_id=42, in_if=3, out_if=2),
                   fl("203.0.113.1", "198.51.100.53", 5353, 53, proto=17, out_if=3),
                   fl("198.51.100.53", "203.0.113.1", 53, 5353, proto=17, in_if=3),
                   fl("10.0.0.6", "198.51.100.80", 1, 2, in_if=70000, out_if=65535),
                   fl("2001:db8::5", "2001:db8:1::80", 40000, 443, in_if=4, out_if=65536),
                   fl("10.0.0.5", "198.51.100.80", 40000, 443, in_if=2, out_if=3, zone=9,
                      mark=0x10),
                   fl("10.0.0.5", "198.51.100.80", 0, 8 << 8, proto=1, in_if=2, out_if=3,
                      zone=65535),
                   fl("2001:db8::5", "2001:db8:1::80", 0, 128 << 8, proto=58, out_if=4,
                      zone=1)],
    "vlan": [fl("10.0.0.1", "10.0.0.2", 1, 2, vlan=100, proto=17),
             fl("2001:db8::1", "2001:db8::2", 1, 2, vlan=4094)],
    "empty": [],
    "many-45": many(45),
    "many-400": many(400),
    "many-400-bad": [f._replace(sport=70000) if i % 37 == 5 else f
                     for i, f in enumerate(many(400))],
}

NATS = {
    "nat-events": [nat("10.0.0.5", "198.51.100.80", 40000, 443, "203.0.113.1", 61000, True),
                   nat("fd00::5", "2001:db8:1::80", 40000, 443, "2001:db8::1", 50000, True,
                       proto=17),
                   nat("10.0.0.5", "198.51.100.80", 40000, 443, "203.0.113.1", 61000, False,
                       time_ms=T0 - 10),
                   nat("10.0.0.6", "198.51.100.80", 70000, 443, "203.0.113.1", 61001, True)],
}


# -- the encoders as the tests drive them ----------------------------------------------

def batch_of(flows: list) -> FlowBatch:
    """``flows`` as a batch in the form under test (``FORM``)."""
    batch = FlowBatch.from_flows(flows)
    return batch.as_columns() if FORM[0] == "columns" else batch


FORM = ["tuples"]       # the form of the batches run() makes


def v5(flows, nats):
    enc = V5Encoder(engine_type=1, engine_id=2)
    ft = flowtools.expand(batch_of(flows), NOW_NS, BOOT, EXADDR)
    out = enc.encode(ft)
    return out, (enc.invalid, enc.skipped_ipv6, enc.sequence, enc.interfaces_zeroed)


def _template(make, flows, nats, twice=False, **kw):
    enc = make(**kw)
    batch = batch_of(flows)
    out = encode_template(enc, batch, nats)
    if twice:
        out += encode_template(enc, batch, nats)
    return out, (enc.invalid, dict(enc.invalid_reasons), list(enc.last_counts), enc.sequence)


def encode_template(enc, batch, nats):
    if isinstance(enc, NetflowV9Encoder):
        return enc.encode(batch, nats, T0, BOOT)
    return enc.encode(batch, nats, T0)


def v9(flows, nats):
    return _template(lambda **kw: NetflowV9Encoder(source_id=9, **kw), flows, nats)


def v9_small(flows, nats):
    return _template(lambda **kw: NetflowV9Encoder(source_id=9, **kw), flows, nats,
                     twice=True, max_size=600, template_refresh_packets=3)


def v9_vlan(flows, nats):
    return _template(lambda **kw: NetflowV9Encoder(**kw), flows, nats, vlan=True)


def ipfix(flows, nats):
    return _template(lambda **kw: IpfixEncoder(domain_id=10, **kw), flows, nats)


def ipfix_small(flows, nats):
    return _template(lambda **kw: IpfixEncoder(domain_id=10, **kw), flows, nats,
                     twice=True, max_size=600, template_refresh_packets=3)


def ipfix_legacy_nat(flows, nats):
    return _template(lambda **kw: IpfixEncoder(**kw), flows, nats, nat_event_codes="legacy")


def biflow(flows, nats):
    """Consecutive records as (forward, reverse) pairs, an odd one alone."""
    pairs = [(flows[i], flows[i + 1] if i + 1 < len(flows) else None)
             for i in range(0, len(flows), 2)]
    enc = BiflowIpfixEncoder(domain_id=3)
    out = enc.encode_pairs(pairs, nats, T0)
    return out, (enc.invalid, dict(enc.invalid_reasons), list(enc.last_counts), enc.sequence)


ENCODERS = {"v5": v5, "v9": v9, "v9-small": v9_small, "v9-vlan": v9_vlan, "ipfix": ipfix,
            "ipfix-small": ipfix_small, "ipfix-legacy-nat": ipfix_legacy_nat,
            "biflow": biflow}
# the cases each encoder is pinned on: (encoder, flows, NAT events)
CASES = ([(e, f, None) for e in ("v5", "v9", "ipfix", "biflow") for f in FLOWS]
         + [(e, f, None) for e in ("v9-small", "ipfix-small")
            for f in ("mixed-templates", "many-45", "many-400", "many-400-bad")]
         + [("v9-vlan", "vlan", None)]
         + [(e, f, n) for e in ("v9", "ipfix", "ipfix-legacy-nat", "v9-small", "ipfix-small",
                                "biflow")
            for f, n in (("empty", "nat-events"), ("mixed-templates", "nat-events"),
                         ("many-45", "nat-events"))])


def pinned(datagrams: list) -> tuple:
    """What the table holds of ``datagrams``: their hex when short, else their
    sizes and digest."""
    if sum(map(len, datagrams)) <= 600:
        return tuple(d.hex() for d in datagrams)
    return (tuple(map(len, datagrams)), hashlib.sha256(b"".join(datagrams)).hexdigest())


def run(case) -> tuple:
    enc, f, n = case
    out, counters = ENCODERS[enc](FLOWS[f], NATS[n] if n else [])
    return pinned(out), counters


EXPECTED: dict = {
    ('v5', 'nat-pair', None):
        (('000500030036f3526553f1010df28e8000000000010200000a000005c633645000000000000000000000000a000005dc0036daf80036ea989c4001bb001b06100000000000000000cb007101c633645000000000000000000000000a000005dc0036daf80036ea98ee4801bb001b06100000000000000000c6336450cb007101000000000000000000000008000023280036daf80036ea9801bbee48001b06000000000000000000',), (0, 0, 3, 0)),
    ('v5', 'udp-untranslated', None):
        (('000500010036f3526553f1010df28e8000000000010200000a0101010a0202020000000000000000000000010000003d0036daf80036ea9814e90035000011000000000000000000',), (0, 0, 1, 0)),
    ('v5', 'icmp4-icmp6', None):
        (('000500030036f3526553f1010df28e8000000000010200000a000009c63364010000000000000000000000030000012c0036daf80036ea9800000800000001000000000000000000cb007101c63364010000000000000000000000030000012c0036daf80036ea9800000800000001000000000000000000c6336401cb0071010000000000000000000000030000012c0036daf80036ea9800000000000001000000000000000000',), (0, 1, 3, 0)),
    ('v5', 'ipv6-nat66', None):
        ((), (0, 3, 0, 0)),
    ('v5', 'mixed-templates', None):
        (('000500040036f3526553f1010df28e8000000000010200000a000005c633645000000000000000000000000a000005dc0036daf80036ea989c4001bb001b06100000000000000000cb007101c633645000000000000000000000000a000005dc0036daf80036ea98ee4801bb001b06100000000000000000c6336450cb007101000000000000000000000008000023280036daf80036ea9801bbee48001b060000000000000000000a000009c63364010000000000000000000000030000012c0036daf80036ea9800000301000001000000000000000000',), (0, 2, 4, 0)),
    ('v5', 'wide-counters', None):
        (('000500010036f3526553f1010df28e8000000000010200000a0000010a0000020000000000000000ffffffffffffffff0036daf80036ea9800010002000006000000000000000000',), (0, 0, 1, 0)),
    ('v5', 'times-before-boot', None):
        (('000500010036f3526553f1010df28e8000000000010200000a0000010a0000020000000000000000000000030000012c000000000000000a00010002000006000000000000000000',), (0, 0, 1, 0)),
    ('v5', 'negative-start', None):
        (('000500030036f3526553f1010df28e8000000000010200000a0000010a0000020000000000000000000000030000012c0036daf80036ea98000100020000060000000000000000000a0000030a0000040000000000000000000000030000012c000000000036ea98000300040000060000000000000000000a0000050a0000060000000000000000000000030000012c0036daf80036ea9800050006000006000000000000000000',), (0, 0, 3, 0)),
    ('v5', 'port-too-wide', None):
        (('000500020036f3526553f1010df28e8000000000010200000a0000030a0000040000000000000000000000030000012c0036daf80036ea98000300040000060000000000000000000a0000050a0000060000000000000000000000030000012c0036daf80036ea9800050006000006000000000000000000',), (2, 0, 2, 0)),
    ('v5', 'counter-too-wide', None):
        (('000500010036f3526553f1010df28e8000000000010200000a0000010a000002000000000000000000000003ffffffff0036daf80036ea9800010002000006000000000000000000',), (1, 0, 1, 0)),
    ('v5', 'bad-family', None):
        (('000500020036f3526553f1010df28e8000000000010200000a0000010a0000020000000000000000000000030000012c0036daf80036ea98000100020000060000000000000000000a0000030a0000040000000000000000000000030000012c0036daf80036ea9800030004000006000000000000000000',), (0, 0, 2, 0)),
    ('v5', 'interfaces', None):
        (('000500080036f3526553f1010df28e8000000000010200000a000005c63364500000000000020003000000030000012c0036daf80036ea989c4001bb000006000000000000000000cb007101c63364500000000000020003000000030000012c0036daf80036ea98ee4801bb000006000000000000000000c6336450cb0071010000000000030002000000030000012c0036daf80036ea9801bbee48000006000000000000000000cb007101c63364350000000000000003000000030000012c0036daf80036ea9814e90035000011000000000000000000c6336435cb0071010000000000030000000000030000012c0036daf80036ea98003514e90000110000000000000000000a000006c6336450000000000000ffff000000030000012c0036daf80036ea98000100020000060000000000000000000a000005c63364500000000000020003000000030000012c0036daf80036ea989c4001bb0000060000000000000000000a000005c63364500000000000020003000000030000012c0036daf80036ea9800000800000001000000000000000000',), (0, 2, 8, 2)),
    ('v5', 'vlan', None):
        (('000500010036f3526553f1010df28e8000000000010200000a0000010a0000020000000000000000000000030000012c0036daf80036ea9800010002000011000000000000000000',), (0, 1, 1, 0)),
    ('v5', 'empty', None):
        ((), (0, 0, 0, 0)),
    ('v5', 'many-45', None):
        (((1464, 1320), '24851ae02b4112273bd318d4d83e72f2a1e3bd5ebd28daa51f47a07064a6eda5'), (0, 11, 57, 0)),
    ('v5', 'many-400', None):
        (((1464, 1464, 1464, 1464, 1464, 1464, 1464, 1464, 1464, 1464, 1464, 1464, 1464, 1464, 1464, 1464, 984), '10c2d16c3bba39c6715a0fd2ebeca2104f8ed9172c0c04b59ca068f453f2c9c4'), (0, 100, 500, 0)),
    ('v5', 'many-400-bad', None):
        (((1464, 1416, 1464, 1416, 1416, 1464, 1464, 1416, 1464, 1416, 1464, 1416, 1464, 1464, 1416, 1416, 984), 'c506dd5e9c89920b5e1637bc10a513fd23badb25a0649121bd32320996b08969'), (8, 100, 492, 0)),
    ('v9', 'nat-pair', None):
        (((844,), '0ebff640c2212d1082d74b5163c6f98706be04d3cc3a8e56b77ae4eadc0b9ed8'), (0, {}, [2], 1)),
    ('v9', 'udp-untranslated', None):
        (((776,), 'd48350807d91983344cfb63c69469a67d0ac3e43c5104b32c82a2adc89018f2c'), (0, {}, [1], 1)),
    ('v9', 'icmp4-icmp6', None):
        (((948,), 'd4ac3a2a50f7cc4d0614e897544362ae959abcabd6a1f3cfdca06d581eeba630'), (0, {}, [3], 1)),
    ('v9', 'ipv6-nat66', None):
        (((940,), '801d157850fca3733889719f5c3102f11966431431126eba05e3a0aea9ca0943'), (0, {}, [2], 1)),
    ('v9', 'mixed-templates', None):
        (((1148,), '7ea2bcd4f6523bc3ecab959e8120c7f8ac6a97f5a7ad3c103d1fa4af8e78312c'), (0, {}, [5], 1)),
    ('v9', 'wide-counters', None):
        (((776,), 'd33585ef4c5fc6e22227874badeeb03119930ffb282bc7f44bdbe94bed9ef353'), (0, {}, [1], 1)),
    ('v9', 'times-before-boot', None):
        (((776,), '1c71452049115d013f91f6428147bdcc2547ee80cc3c2b975d63981ce5dc0942'), (0, {}, [1], 1)),
    ('v9', 'negative-start', None):
        (((844,), 'de66e130195ba08abdc008ee5dcf21d00da98233ea4876a396a182871121f64a'), (1, {'flowStartMilliseconds out of range': 1}, [2], 1)),
    ('v9', 'port-too-wide', None):
        (((776,), '3244876d9e1f9f5b985588e05d8fcd3c05347dcabe1d9c7f7dd773231e631849'), (2, {'sourceTransportPort out of range': 1, 'postNAPTSourceTransportPort out of range': 1}, [1], 1)),
    ('v9', 'counter-too-wide', None):
        (((704,), '32fba5edd5baee7af90882138dce26798ec7a5cb5095272b686d74a47ac97cd1'), (2, {'octetDeltaCount out of range': 1, 'packetDeltaCount out of range': 1}, [0], 1)),
    ('v9', 'bad-family', None):
        (((776,), '3244876d9e1f9f5b985588e05d8fcd3c05347dcabe1d9c7f7dd773231e631849'), (1, {'not IPv4 or IPv6': 1}, [1], 1)),
    ('v9', 'interfaces', None):
        (((1320, 144), '9030e94d2e1d7f6a7fec5e8a22da27e6f5491c89f5f1e6cdde8c983c8eaf5776'), (0, {}, [8, 1], 2)),
    ('v9', 'vlan', None):
        (((896,), '604c9ef5f791e9419268be3e2a44ae2258730374ac333a17c007e1dca83d4e9e'), (0, {}, [2], 1)),
    ('v9', 'empty', None):
        ((), (0, {}, [], 0)),
    ('v9', 'many-45', None):
        (((1380, 1392, 1312, 256), '2898337e16a7cf89fcbdc567ced9ea255ffbd9ec664968ac3f920dbaad16e0ea'), (0, {}, [10, 17, 16, 2], 4)),
    ('v9', 'many-400', None):
        (((1380, 1364, 1364, 1364, 1364, 1364, 1364, 1364, 1364, 1364, 1316, 1380, 1380, 1380, 1380, 1380, 1380, 1368, 1368, 1368, 1380, 1292, 1292, 1292, 944), '1122b9ce5d954e9f192f59937ceb2a11b322185576138efe59d61d8b7ae30781'), (0, {}, [10, 20, 20, 20, 20, 20, 20, 20, 20, 20, 15, 11, 11, 11, 11, 11, 15, 22, 22, 22, 11, 18, 11, 11, 8], 25)),
    ('v9', 'many-400-bad', None):
        (((1380, 1364, 1372, 1372, 1364, 1364, 1372, 1364, 1364, 1372, 1356, 1380, 1380, 1380, 1384, 1380, 1376, 1368, 1368, 1368, 1380, 1372, 1296, 1292, 140), '1f18172c9329f034ad686ccd83c88c59c8fe9328212a66f03deb65fbbfb6496c'), (8, {'sourceTransportPort out of range': 8}, [10, 20, 20, 20, 20, 20, 20, 20, 20, 20, 13, 11, 11, 11, 11, 11, 20, 22, 22, 22, 11, 14, 11, 11, 1], 25)),
    ('ipfix', 'nat-pair', None):
        (((830,), '7f0d031b5324e9866187820fa2f49b231419fbb5f638587c2aeeb1b091b6bce0'), (0, {}, [2], 2)),
    ('ipfix', 'udp-untranslated', None):
        (((763,), 'b235fed324bd9fdbeb86bef8e84d7dcd83e03f0f001de7d6ed6af4cdfcf57e88'), (0, {}, [1], 1)),
    ('ipfix', 'icmp4-icmp6', None):
        (((931,), '58b713308c5e8a68267332c82691e95236c67f2858639bd4b4eb59701a82204a'), (0, {}, [3], 3)),
    ('ipfix', 'ipv6-nat66', None):
        (((926,), '375b9e2bd24fa87d70c40cc640651fbda45b6a4c3132ff53c2d6b9d9b7250a42'), (0, {}, [2], 2)),
    ('ipfix', 'mixed-templates', None):
        (((1129,), '885ce929d7b699d9b9d7c701887a9143d72b6246b8e4accf9684f5f7727f0f51'), (0, {}, [5], 5)),
    ('ipfix', 'wide-counters', None):
        (((763,), '49c62da23c7a487616779f41afd6c737408cf6c5535957fb0eda548dc08b4916'), (0, {}, [1], 1)),
    ('ipfix', 'times-before-boot', None):
        (((763,), 'a8bb4d8669142add1161d7949a217187b4995631ff55b5d5c5e5162cc528043c'), (0, {}, [1], 1)),
    ('ipfix', 'negative-start', None):
        (((830,), '22389ad33ee6102847106ab03203dc14010b48619b6d80473e9c004d4e70d70d'), (1, {'flowStartMilliseconds out of range': 1}, [2], 2)),
    ('ipfix', 'port-too-wide', None):
        (((763,), 'd6855db742d4b5d17a95fae5041891d24847469afc75328e47b2117063090758'), (2, {'sourceTransportPort out of range': 1, 'postNAPTSourceTransportPort out of range': 1}, [1], 1)),
    ('ipfix', 'counter-too-wide', None):
        (((692,), '039527bfc1e42623810489bb949138fcaf88fc9658e405c9b6cf13ee0d2bf120'), (2, {'octetDeltaCount out of range': 1, 'packetDeltaCount out of range': 1}, [0], 0)),
    ('ipfix', 'bad-family', None):
        (((763,), 'd6855db742d4b5d17a95fae5041891d24847469afc75328e47b2117063090758'), (1, {'not IPv4 or IPv6': 1}, [1], 1)),
    ('ipfix', 'interfaces', None):
        (((1302, 137), 'd7efc7934d542ffa63e433d09074e3a9ac1251a8acdf6139fa2b93b5bb60101d'), (0, {}, [8, 1], 9)),
    ('ipfix', 'vlan', None):
        (((882,), '63e45f9894cd928d7c586dfa7ccd3a205a1d52bb34ae574bfe268c45d6c8bcda'), (0, {}, [2], 2)),
    ('ipfix', 'empty', None):
        ((), (0, {}, [], 0)),
    ('ipfix', 'many-45', None):
        (((1366, 1387, 1306, 250), '5c654f5c4377a3e35dc2ee13d921281a3962c254d12dd33e0c446d38fa1fcaec'), (0, {}, [10, 17, 16, 2], 45)),
    ('ipfix', 'many-400', None):
        (((1366, 1360, 1360, 1360, 1360, 1360, 1360, 1360, 1360, 1360, 1309, 1373, 1373, 1373, 1373, 1373, 1373, 1362, 1362, 1362, 1367, 1399, 1400, 1400, 595), 'e63892853f860815f1c36746c7e39bfd97bb7c1f8fe0935dfe1e06aeddaf11b3'), (0, {}, [10, 20, 20, 20, 20, 20, 20, 20, 20, 20, 15, 11, 11, 11, 11, 11, 15, 22, 22, 22, 11, 19, 12, 12, 5], 400)),
    ('ipfix', 'many-400-bad', None):
        (((1366, 1360, 1364, 1364, 1360, 1360, 1364, 1360, 1360, 1364, 1347, 1373, 1373, 1373, 1377, 1373, 1368, 1362, 1362, 1362, 1367, 1364, 1285, 1400), '581d5bf277c55ac497573f0f301ae01c493cca4ca19cdfbc13d46a7122cdfd45'), (8, {'sourceTransportPort out of range': 8}, [10, 20, 20, 20, 20, 20, 20, 20, 20, 20, 13, 11, 11, 11, 11, 11, 20, 22, 22, 22, 11, 14, 11, 12], 392)),
    ('biflow', 'nat-pair', None):
        (((1084,), 'b27d3f22d3c5707f3aa2f713a27e7ebf40cea7a2afd7283e5b45ca9de91c44b5'), (0, {}, [1], 1)),
    ('biflow', 'udp-untranslated', None):
        (((1084,), '4f22c4d156f1b932a254dd0d401687d256694445655b7baa531ae827b756d1b3'), (0, {}, [1], 1)),
    ('biflow', 'icmp4-icmp6', None):
        (((1172,), 'e4871d2a6f7abb1ffb7661a82bbb1b12ab7983ca9be4fab892f2eb05425304e5'), (0, {}, [2], 2)),
    ('biflow', 'ipv6-nat66', None):
        (((1132,), 'fb9ebb9a4bd52ffb83e41dc52babd89a0f77eaf035f6ae0a316770ba6920d22f'), (0, {}, [1], 1)),
    ('biflow', 'mixed-templates', None):
        (((1384,), '8531bceb143fec7a118af6d0bd7b996072cb22ae393d48d3556129ea57aeda1a'), (0, {}, [3], 3)),
    ('biflow', 'wide-counters', None):
        (((1084,), '605dce362ac183f64f5c29254ef030e300744d040b738d319d8c50af56f7cde7'), (0, {}, [1], 1)),
    ('biflow', 'times-before-boot', None):
        (((1084,), 'ffd2be8ee8996ef803aaacb19920cad955425b19b7f19010fe4c1477934ff850'), (0, {}, [1], 1)),
    ('biflow', 'negative-start', None):
        (((1084,), '4785c09329255f50a9b0d0c2191bd5e4496b99fe658251c66c9c940c43887bdc'), (1, {'reverseFlowStartMilliseconds out of range': 1}, [1], 1)),
    ('biflow', 'port-too-wide', None):
        (((980,), 'd5476d11589705ac4afdf2218ca42e480638170d5942c9caf9fa79d279d67d8c'), (2, {'sourceTransportPort out of range': 1, 'postNAPTSourceTransportPort out of range': 1}, [0], 0)),
    ('biflow', 'counter-too-wide', None):
        (((980,), 'd5476d11589705ac4afdf2218ca42e480638170d5942c9caf9fa79d279d67d8c'), (1, {'octetDeltaCount out of range': 1}, [0], 0)),
    ('biflow', 'bad-family', None):
        ((), (1, {'not IPv4 or IPv6': 1}, [], 0)),
    ('biflow', 'interfaces', None):
        (((1396, 170), '64e45855222e11983d10494026712825efebc79ca5a85edd9ae07f416046543f'), (0, {}, [4, 1], 5)),
    ('biflow', 'vlan', None):
        (((1084,), 'fc06a8ec04586d1004dbb240c027b2550e3b4b5ed04913d2d34f9f0f1cbe6f18'), (0, {}, [1], 1)),
    ('biflow', 'empty', None):
        ((), (0, {}, [], 0)),
    ('biflow', 'many-45', None):
        (((1384, 1388, 490), '6a8600530e125d2793f2a9509425406a076a47630804f9bb27ca9cd97973fe38'), (0, {}, [4, 14, 5], 23)),
    ('biflow', 'many-400', None):
        (((1384, 1320, 1320, 1320, 1320, 1320, 1320, 1320, 1370, 1336, 1336, 1336, 1336, 1336, 1336, 678), '566d181ebeb9b158a18d21a6c427d86835da071f1364641c092328a636c5c110'), (0, {}, [4, 13, 13, 13, 13, 13, 13, 13, 14, 14, 14, 14, 14, 14, 14, 7], 200)),
    ('biflow', 'many-400-bad', None):
        (((1384, 1320, 1324, 1320, 1320, 1324, 1320, 1320, 1358, 1336, 1336, 1336, 1336, 1336, 1336, 490), '6d8655e347dba9c7f3c5f331417885633bfaaa5bdbcaec46877b50f71ce3cd66'), (2, {'sourceTransportPort out of range': 2}, [4, 13, 13, 13, 13, 13, 13, 13, 14, 14, 14, 14, 14, 14, 14, 5], 198)),
    ('v9-small', 'mixed-templates', None):
        (((592, 580, 464), '04761a9a8df55b18424403520f04ab32b6a5301e545549fbb774b922460d8f48'), (0, {}, [5], 3)),
    ('v9-small', 'many-45', None):
        (((592, 544, 560, 560, 592, 584, 516, 580, 592, 504, 256, 560, 592, 544, 560, 588, 592, 512, 580, 504, 592, 256), 'b600c199e044a0e17f3e0ee79a2cc17a4203509800dee3eb45fb69559f612230'), (0, {}, [8, 0, 6, 8, 5, 0, 3, 8, 6, 0, 1], 22)),
    ('v9-small', 'many-400', None):
        (((592, 544, 560, 560, 592, 544, 560, 560, 592, 544, 560, 560, 592, 544, 560, 560, 592, 544, 560, 560, 592, 544, 560, 560, 592, 544, 560, 560, 592, 544, 560, 560, 592, 544, 560, 560, 592, 528, 516, 516, 592, 512, 516, 516, 592, 512, 516, 516, 592, 512, 516, 516, 592, 512, 516, 516, 592, 512, 516, 516, 592, 576, 576, 576, 592, 568, 576, 576, 592, 568, 576, 576, 592, 568, 576, 576, 592, 504, 600, 600, 592, 600, 600, 600, 592, 600, 484, 560, 592, 544, 560, 560, 592, 544, 560, 560, 592, 544, 560, 560, 592, 544, 560, 560, 592, 544, 560, 560, 592, 544, 560, 560, 592, 544, 560, 560, 592, 544, 560, 560, 592, 544, 560, 536, 592, 512, 516, 516, 592, 512, 516, 516, 592, 512, 516, 516, 592, 512, 516, 516, 592, 512, 516, 516, 592, 512, 516, 584, 592, 568, 576, 576, 592, 568, 576, 576, 592, 568, 576, 576, 592, 568, 576, 504, 592, 600, 600, 600, 592, 600, 600, 600, 592, 488), '7f77e0c90b5df499dbc9eccc7e5e411b1b7df7cd6b7e6825a2538dbe3d619402'), (0, {}, [8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 5, 0, 3, 4, 4, 0, 3, 4, 4, 0, 3, 4, 4, 0, 3, 4, 4, 0, 3, 4, 4, 0, 3, 4, 7, 0, 7, 9, 9, 0, 7, 9, 9, 0, 7, 9, 9, 0, 7, 9, 6, 0, 4, 5, 5, 0, 4, 5, 5, 0, 3], 174)),
    ('v9-small', 'many-400-bad', None):
        (((592, 544, 560, 560, 592, 544, 560, 568, 592, 544, 568, 560, 592, 544, 560, 560, 592, 544, 560, 560, 592, 548, 560, 568, 592, 544, 560, 560, 592, 544, 560, 560, 592, 544, 568, 488, 592, 516, 516, 516, 592, 512, 516, 516, 592, 512, 516, 516, 592, 512, 516, 516, 592, 512, 524, 516, 592, 512, 516, 584, 592, 568, 576, 576, 592, 568, 576, 576, 592, 568, 576, 576, 592, 568, 576, 504, 592, 600, 600, 484, 592, 600, 600, 600, 592, 488, 560, 560, 592, 544, 560, 560, 592, 548, 560, 568, 592, 544, 560, 560, 592, 544, 560, 560, 592, 544, 568, 560, 592, 548, 560, 560, 592, 544, 560, 560, 592, 544, 568, 560, 592, 600, 516, 516, 592, 512, 516, 516, 592, 512, 516, 516, 592, 512, 516, 516, 592, 512, 524, 516, 592, 512, 516, 584, 592, 568, 576, 576, 592, 568, 576, 576, 592, 568, 576, 576, 592, 568, 576, 512, 592, 600, 600, 484, 592, 600, 600, 600, 592, 600, 140), '215aee08d838c1d35cfa9a31bdb087a107186fc6f788c3ab4ade398f09f3b499'), (16, {'sourceTransportPort out of range': 16}, [8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 5, 4, 4, 0, 3, 4, 4, 0, 3, 4, 4, 0, 3, 4, 4, 0, 3, 4, 4, 0, 3, 4, 5, 0, 7, 9, 9, 0, 7, 9, 9, 0, 7, 9, 9, 0, 7, 9, 8, 0, 4, 5, 4, 0, 4, 5, 5, 0, 4, 1], 171)),
    ('ipfix-small', 'mixed-templates', None):
        (((580, 569, 453), '46c744a748734ab3518b380c25e136f345fa0a1b6db6b66e5ba6922e378c06bb'), (0, {}, [5], 10)),
    ('ipfix-small', 'many-45', None):
        (((580, 538, 556, 556, 580, 576, 512, 574, 580, 499, 250, 556, 580, 538, 556, 583, 580, 505, 574, 498, 580, 251), '91bbad1c429677128237710242215826579dda6574bf2564f9fefdb479c269a2'), (0, {}, [8, 0, 6, 8, 5, 0, 3, 8, 6, 0, 1], 90)),
    ('ipfix-small', 'many-400', None):
        (((580, 538, 556, 556, 580, 538, 556, 556, 580, 538, 556, 556, 580, 538, 556, 556, 580, 538, 556, 556, 580, 538, 556, 556, 580, 538, 556, 556, 580, 538, 556, 556, 580, 538, 556, 556, 580, 520, 512, 512, 580, 505, 512, 512, 580, 505, 512, 512, 580, 505, 512, 512, 580, 505, 512, 512, 580, 505, 512, 512, 580, 569, 569, 569, 580, 563, 569, 569, 580, 563, 569, 569, 580, 563, 569, 569, 580, 499, 595, 595, 580, 596, 595, 595, 580, 596, 480, 556, 580, 538, 556, 556, 580, 538, 556, 556, 580, 538, 556, 556, 580, 538, 556, 556, 580, 538, 556, 556, 580, 538, 556, 556, 580, 538, 556, 556, 580, 538, 556, 556, 580, 538, 556, 527, 580, 505, 512, 512, 580, 505, 512, 512, 580, 505, 512, 512, 580, 505, 512, 512, 580, 505, 512, 512, 580, 505, 512, 575, 580, 563, 569, 569, 580, 563, 569, 569, 580, 563, 569, 569, 580, 563, 569, 498, 580, 596, 595, 595, 580, 596, 595, 595, 580, 481), 'a33e60d15f8ee676ee90db33398e4be6b37c7017cd2b83a012aca1d1f244226b'), (0, {}, [8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 5, 0, 3, 4, 4, 0, 3, 4, 4, 0, 3, 4, 4, 0, 3, 4, 4, 0, 3, 4, 4, 0, 3, 4, 7, 0, 7, 9, 9, 0, 7, 9, 9, 0, 7, 9, 9, 0, 7, 9, 6, 0, 4, 5, 5, 0, 4, 5, 5, 0, 3], 800)),
    ('ipfix-small', 'many-400-bad', None):
        (((580, 538, 556, 556, 580, 538, 556, 560, 580, 538, 560, 556, 580, 538, 556, 556, 580, 538, 556, 556, 580, 542, 556, 560, 580, 538, 556, 556, 580, 538, 556, 556, 580, 538, 560, 482, 580, 509, 512, 512, 580, 505, 512, 512, 580, 505, 512, 512, 580, 505, 512, 512, 580, 505, 516, 512, 580, 505, 512, 575, 580, 563, 569, 569, 580, 563, 569, 569, 580, 563, 569, 569, 580, 563, 569, 498, 580, 596, 595, 599, 580, 596, 595, 595, 580, 366, 556, 556, 580, 538, 556, 556, 580, 542, 556, 560, 580, 538, 556, 556, 580, 538, 556, 556, 580, 538, 560, 556, 580, 542, 556, 556, 580, 538, 556, 556, 580, 538, 560, 556, 580, 591, 512, 512, 580, 505, 512, 512, 580, 505, 512, 512, 580, 505, 512, 512, 580, 505, 516, 512, 580, 505, 512, 577, 580, 563, 569, 569, 580, 563, 569, 569, 580, 563, 569, 569, 580, 563, 569, 508, 580, 596, 595, 599, 580, 596, 595, 595, 580, 596), '71201d98937e2b944f9aad8ec53ebb8ccad0d50923bc84bd9618b47469ebb22a'), (16, {'sourceTransportPort out of range': 16}, [8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 6, 8, 8, 0, 5, 4, 4, 0, 3, 4, 4, 0, 3, 4, 4, 0, 3, 4, 4, 0, 3, 4, 4, 0, 3, 4, 5, 0, 7, 9, 9, 0, 7, 9, 9, 0, 7, 9, 9, 0, 7, 9, 8, 0, 4, 5, 5, 0, 4, 5, 5, 0, 4], 784)),
    ('v9-vlan', 'vlan', None):
        (((936,), 'ade1e12f4ab3885a09861e1f3f631dd4f51530c5f99a715aaefefb0386353f76'), (0, {}, [2], 1)),
    ('v9', 'empty', 'nat-events'):
        (((912,), 'bfa67ceb193b50faca1e24eedcfd918ad7c7afc9857b3fe13ee5f41855870d3e'), (1, {'sourceTransportPort out of range': 1}, [3], 1)),
    ('v9', 'mixed-templates', 'nat-events'):
        (((1356,), 'a428eb5c81d3a4df89055b1547191a73fbe408e8c9025562cf1c0a98bea1fe19'), (1, {'sourceTransportPort out of range': 1}, [8], 1)),
    ('v9', 'many-45', 'nat-events'):
        (((1380, 1392, 1312, 464), 'e87a1ddd56d7baf6a9a0610834ca44f7bdc0bca604377136cc8190ab363dfc19'), (1, {'sourceTransportPort out of range': 1}, [10, 17, 16, 5], 4)),
    ('ipfix', 'empty', 'nat-events'):
        (((898,), '3cc08c85837128857e0f34cde714fbb92e5e8ee8f0d11d34386ed05694ebf0c9'), (1, {'sourceTransportPort out of range': 1}, [3], 3)),
    ('ipfix', 'mixed-templates', 'nat-events'):
        (((1335,), '71c34557745c3c57786f40bb702bac4494d13405b75ae627bd686d1201c36943'), (1, {'sourceTransportPort out of range': 1}, [8], 8)),
    ('ipfix', 'many-45', 'nat-events'):
        (((1366, 1387, 1306, 456), '73e56aed1884c492f95d072dd8c59f8535cb29f03435362d62027fd6d49e9854'), (1, {'sourceTransportPort out of range': 1}, [10, 17, 16, 5], 48)),
    ('ipfix-legacy-nat', 'empty', 'nat-events'):
        (((898,), '96088bdbc61253c3e393070557579443dbb350b7a6df21d626a7c57a724b43b0'), (1, {'sourceTransportPort out of range': 1}, [3], 3)),
    ('ipfix-legacy-nat', 'mixed-templates', 'nat-events'):
        (((1335,), '14e8df5f163bd99012392f8066d9e40624b941e2e4e9da6e90d683c8c1619ae9'), (1, {'sourceTransportPort out of range': 1}, [8], 8)),
    ('ipfix-legacy-nat', 'many-45', 'nat-events'):
        (((1366, 1387, 1306, 456), '59e0d70bea769d71467004832d4cf057a3a3995b46d9d89f0a8db8bdbbfb0ce4'), (1, {'sourceTransportPort out of range': 1}, [10, 17, 16, 5], 48)),
    ('v9-small', 'empty', 'nat-events'):
        (((592, 344, 228), 'de5697a004c7e1b8d6689d4644e1a4001f0952e6c4daceadb881d29e6f5368d2'), (2, {'sourceTransportPort out of range': 2}, [3], 3)),
    ('v9-small', 'mixed-templates', 'nat-events'):
        (((592, 580, 228, 568, 592, 240), 'a472c4eeb175cd803846066254651a67ae5403df944346682de672802beb3050'), (2, {'sourceTransportPort out of range': 2}, [7, 0, 1], 6)),
    ('v9-small', 'many-45', 'nat-events'):
        (((592, 544, 560, 560, 592, 584, 516, 580, 592, 504, 464, 560, 592, 544, 560, 588, 592, 512, 580, 504, 592, 464), '9770bf4650f3478f4e366c7a492ce870952b039b0f2b2b96d01194ff34e8c5d7'), (2, {'sourceTransportPort out of range': 2}, [8, 0, 6, 8, 5, 0, 3, 8, 6, 0, 4], 22)),
    ('ipfix-small', 'empty', 'nat-events'):
        (((580, 338, 222), '40fc2ec9ff3a71e4ae9ffcf8271442089aacf4838a3283133e36fe282dcadd5b'), (2, {'sourceTransportPort out of range': 2}, [3], 6)),
    ('ipfix-small', 'mixed-templates', 'nat-events'):
        (((580, 569, 222, 557, 580, 234), '46292fb0e7182f0d1d0ff537ceb1a773f651d63732227921856ae72ac35fa8ad'), (2, {'sourceTransportPort out of range': 2}, [7, 0, 1], 16)),
    ('ipfix-small', 'many-45', 'nat-events'):
        (((580, 538, 556, 556, 580, 576, 512, 574, 580, 499, 456, 556, 580, 538, 556, 583, 580, 505, 574, 498, 580, 457), 'e948d044c5be5a03356cbcaef4a3e74e72c9b993737f8e4cf19b4e87131a6f14'), (2, {'sourceTransportPort out of range': 2}, [8, 0, 6, 8, 5, 0, 3, 8, 6, 0, 4], 96)),
    ('biflow', 'empty', 'nat-events'):
        (((1186,), 'a753c2fdb5c228d8f7db9e628d36d4d1a46eba345c0f49296fe7da36e4bb37e6'), (1, {'sourceTransportPort out of range': 1}, [3], 3)),
    ('biflow', 'mixed-templates', 'nat-events'):
        (((1384, 222), 'cfa5896ce1d76ec53b2f8e75ed21723e1fc28e29f5f721fb1a38e2cfc18db54f'), (1, {'sourceTransportPort out of range': 1}, [3, 3], 6)),
    ('biflow', 'many-45', 'nat-events'):
        (((1384, 1388, 696), '5ba4da2e95643dacaba4ba3c8cbb3b52c305b6dd70c6c024fad34e77a2bfa538'), (1, {'sourceTransportPort out of range': 1}, [4, 14, 8], 26)),
}


# both forms of a batch: the encoders take each its own way (see
# record.FlowBatch) and must write the same bytes; the biflow encoder takes
# pairs of tuples
RUNS = [(case, form) for case in CASES for form in ("tuples", "columns")
        if form == "tuples" or case[0] != "biflow"]


@pytest.mark.parametrize("case, form", RUNS,
                         ids=["/".join(c for c in (*case, form) if c) for case, form in RUNS])
def test_wire(case, form):
    FORM[0] = form
    try:
        assert run(case) == EXPECTED[case]
    finally:
        FORM[0] = "tuples"


def test_every_case_is_pinned():
    assert set(EXPECTED) == set(CASES)


if __name__ == "__main__":
    print("EXPECTED: dict = {")
    for case in CASES:
        print(f"    {case!r}:\n        {run(case)!r},")
    print("}")
