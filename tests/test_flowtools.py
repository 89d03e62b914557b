"""The flow-tools view: Flow records -> 18-field records and CSV lines."""

import ipaddress

import pytest

from nfflowd import flowtools
from nfflowd.flowtools import (DPKTS, DOCTETS, DSTADDR, DSTPORT, FIRST, INPUT, LAST, NEXTHOP,
                               OUTPUT, R_INPUT, R_SRCPORT, SRCADDR, SRCPORT, SYSUPTIME,
                               csv_block, csv_line, csv_lines, expand)
from nfflowd.record import ORIGINAL, REPLY, Flow, FlowBatch


def ip(s):
    return ipaddress.ip_address(s).packed


def flow(src, dst, sport, dport, post_src=None, post_dst=None, post_sport=None,
         post_dport=None, proto=6, packets=1, octets=100, start_ms=0, end_ms=0,
         direction=ORIGINAL, tos=0, tcp_flags=0, in_if=0, out_if=0):
    s, d = ip(src), ip(dst)
    return Flow(4 if len(s) == 4 else 6, proto, s, d, sport, dport,
                ip(post_src) if post_src else s, ip(post_dst) if post_dst else d,
                sport if post_sport is None else post_sport,
                dport if post_dport is None else post_dport,
                packets, octets, start_ms, end_ms, direction, tos=tos, tcp_flags=tcp_flags,
                in_if=in_if, out_if=out_if)


# The example from the original tool's output (an HTTP request from
# 10.0.195.106 source-NATed to 192.76.7.154).
EXAMPLE_CSV = [
    "1248952480,737235000,279737,172.16.1.1,720,38052,136315,279737,10.0.195.106,74.125.6.225,0.0.0.0,0,0,62380,80,6,0,0",
    "1248952480,737235000,279737,172.16.1.1,720,38052,136315,279737,192.76.7.154,74.125.6.225,0.0.0.0,0,0,62380,80,6,0,0",
    "1248952480,737235000,279737,172.16.1.1,1432,2027040,136315,279737,74.125.6.225,192.76.7.154,0.0.0.0,0,0,80,62380,6,0,0",
]
EX_NOW_NS = 1248952480_737_235_000
EX_BOOT_MS = 1248952480_737 - 279737        # SYSUPTIME 279737 at export time


def example_flows():
    start, end = EX_BOOT_MS + 136315, EX_BOOT_MS + 279737
    orig = flow("10.0.195.106", "74.125.6.225", 62380, 80, post_src="192.76.7.154",
                packets=720, octets=38052, start_ms=start, end_ms=end)
    # The reply direction: its post_* fields (the tuple on the inside) must
    # never appear in the view.
    reply = flow("74.125.6.225", "192.76.7.154", 80, 62380, post_dst="10.0.195.106",
                 packets=1432, octets=2027040, start_ms=start, end_ms=end, direction=REPLY)
    return [orig, reply]


def test_example_reproduced_byte_for_byte():
    recs = expand(FlowBatch.from_flows(example_flows()), EX_NOW_NS, EX_BOOT_MS, "172.16.1.1")
    assert csv_lines(recs) == EXAMPLE_CSV
    assert [csv_line(r) for r in recs] == EXAMPLE_CSV


def four(r):
    return (ipaddress.ip_address(r[SRCADDR]).compressed, ipaddress.ip_address(r[DSTADDR]).compressed,
            r[SRCPORT], r[DSTPORT])


CASES = [
    # name, flows, expected (src, dst, sport, dport) of each record, in order
    ("snat",
     [flow("10.0.0.5", "198.51.100.7", 40000, 443, post_src="203.0.113.9", post_sport=1025),
      flow("198.51.100.7", "203.0.113.9", 443, 1025, post_dst="10.0.0.5", post_dport=40000,
           direction=REPLY)],
     [("10.0.0.5", "198.51.100.7", 40000, 443),
      ("203.0.113.9", "198.51.100.7", 1025, 443),
      ("198.51.100.7", "203.0.113.9", 443, 1025)]),
    ("dnat",  # port forward: record 2 is client -> internal server address/port
     [flow("198.51.100.7", "203.0.113.9", 50000, 80, post_dst="10.0.0.80", post_dport=8080),
      flow("10.0.0.80", "198.51.100.7", 8080, 50000, post_src="203.0.113.9", post_sport=80,
           direction=REPLY)],
     [("198.51.100.7", "203.0.113.9", 50000, 80),
      ("198.51.100.7", "10.0.0.80", 50000, 8080),
      ("10.0.0.80", "198.51.100.7", 8080, 50000)]),
    ("no_nat",
     [flow("10.0.0.5", "10.0.1.5", 5353, 53, proto=17),
      flow("10.0.1.5", "10.0.0.5", 53, 5353, proto=17, direction=REPLY)],
     [("10.0.0.5", "10.0.1.5", 5353, 53), ("10.0.1.5", "10.0.0.5", 53, 5353)]),
    ("icmp_echo_snat",  # dport = type*256+code: echo request 8/0, reply 0/0
     [flow("10.0.0.5", "198.51.100.7", 0, 8 * 256, post_src="203.0.113.9", proto=1),
      flow("198.51.100.7", "203.0.113.9", 0, 0, post_dst="10.0.0.5", proto=1, direction=REPLY)],
     [("10.0.0.5", "198.51.100.7", 0, 2048), ("203.0.113.9", "198.51.100.7", 0, 2048),
      ("198.51.100.7", "203.0.113.9", 0, 0)]),
    ("ipv6_no_nat",
     [flow("2001:db8::1", "2001:db8:1::2", 40000, 22),
      flow("2001:db8:1::2", "2001:db8::1", 22, 40000, direction=REPLY)],
     [("2001:db8::1", "2001:db8:1::2", 40000, 22), ("2001:db8:1::2", "2001:db8::1", 22, 40000)]),
    ("ipv6_npt",  # prefix translation of the source, no port change
     [flow("fd00::5", "2001:db8:1::2", 40000, 22, post_src="2001:db8:ff::5"),
      flow("2001:db8:1::2", "2001:db8:ff::5", 22, 40000, post_dst="fd00::5", direction=REPLY)],
     [("fd00::5", "2001:db8:1::2", 40000, 22), ("2001:db8:ff::5", "2001:db8:1::2", 40000, 22),
      ("2001:db8:1::2", "2001:db8:ff::5", 22, 40000)]),
]


@pytest.mark.parametrize("name,flows,expected", CASES, ids=[c[0] for c in CASES])
def test_triplet(name, flows, expected):
    recs = expand(FlowBatch.from_flows(flows), 10**18, 10**12 - 5000, "192.0.2.1")
    assert [four(r) for r in recs] == expected
    # Same counters on both records of a translated ORIGINAL flow.
    f0 = flows[0]
    for r in recs[:len(expected) - 1]:
        assert (r[DPKTS], r[DOCTETS]) == (f0.packets, f0.octets)
    assert (recs[-1][DPKTS], recs[-1][DOCTETS]) == (flows[1].packets, flows[1].octets)


def test_ipv6_csv_line():
    f = flow("2001:db8::1", "2001:db8:1::2", 40000, 22, post_src="2001:db8:ff::1",
             packets=3, octets=300, start_ms=1000, end_ms=2000)
    recs = expand(FlowBatch.from_flows([f]), 5_000_000_000, 0, "2001:db8::fe")
    assert csv_lines(recs) == [
        "5,0,5000,2001:db8::fe,3,300,1000,2000,2001:db8::1,2001:db8:1::2,::,0,0,40000,22,6,0,0",
        "5,0,5000,2001:db8::fe,3,300,1000,2000,2001:db8:ff::1,2001:db8:1::2,::,0,0,40000,22,6,0,0",
    ]
    assert recs[0][NEXTHOP] == bytes(16)


def test_reply_never_uses_post_fields_even_if_translated():
    f = flow("198.51.100.7", "203.0.113.9", 443, 1025, post_dst="10.0.0.5", post_dport=40000,
             direction=REPLY)
    assert f.translated
    recs = expand(FlowBatch.from_flows([f]), 10**18, 0)
    assert [four(r) for r in recs] == [("198.51.100.7", "203.0.113.9", 443, 1025)]


@pytest.mark.parametrize("start,end,boot,first,last", [
    (1500, 2500, 1000, 500, 1500),                  # plain
    (500, 2500, 1000, 0, 1500),                     # started before boot: clamped to 0
    (1000 + 2**32 + 7, 1000 + 2**32 + 9, 1000, 7, 9),   # uptime past 49.7 days: wraps
])
def test_first_last(start, end, boot, first, last):
    r = expand(FlowBatch.from_flows([flow("10.0.0.1", "10.0.0.2", 1, 2, start_ms=start, end_ms=end)]),
               (boot + 2**33) * 1_000_000, boot)[0]
    assert (r[FIRST], r[LAST]) == (first, last)


@pytest.mark.parametrize("now_ms,boot,up", [
    (1_000_123, 1_000_000, 123), (1_000_000, 1_000_050, 0), (2**32 + 10, 0, 10)])
def test_sysuptime(now_ms, boot, up):
    r = expand(FlowBatch.from_flows([flow("10.0.0.1", "10.0.0.2", 1, 2)]), now_ms * 1_000_000 + 999_999, boot)[0]
    assert r[SYSUPTIME] == up
    assert r[1] == (now_ms % 1000) * 1_000_000 + 999_999
    assert r[0] == now_ms // 1000 % 2**32


def test_counters_clamped_to_32_bits():
    r = expand(FlowBatch.from_flows([flow("10.0.0.1", "10.0.0.2", 1, 2, packets=2**32, octets=2**40 + 5)]), 10**18, 0)[0]
    assert (r[DPKTS], r[DOCTETS]) == (2**32 - 1, 2**32 - 1)
    assert ",4294967295,4294967295," in csv_line(r)


def test_exaddr_forms():
    f = [flow("10.0.0.1", "10.0.0.2", 1, 2)]
    for ex, text in [(None, "0.0.0.0"), ("198.51.100.1", "198.51.100.1"),
                     (ip("198.51.100.2"), "198.51.100.2")]:
        assert csv_lines(expand(FlowBatch.from_flows(f), 10**18, 0, ex))[0].split(",")[3] == text


def test_csv_lines_matches_csv_line_on_varied_records():
    flows = []
    for i in range(300):
        fam6 = i % 3 == 0
        src = f"2001:db8::{i:x}" if fam6 else f"10.{i % 7}.{i % 11}.{i % 13}"
        dst = f"2001:db8:1::{i:x}" if fam6 else f"192.0.2.{i % 200}"
        flows.append(flow(src, dst, i * 211 % 65536, i * 17 % 65536, proto=i % 256,
                          packets=i * 1000, octets=i * 99991, start_ms=i, end_ms=i * 3,
                          tos=i % 256, tcp_flags=(i * 7) % 256, in_if=i % 5,
                          out_if=(i * 3) % 70000,
                          post_src=None if i % 2 else ("2001:db8:ff::1" if fam6 else "203.0.113.1"),
                          direction=ORIGINAL if i % 5 else REPLY))
    recs = expand(FlowBatch.from_flows(flows), 10**18 + 12345, 10**12 - 1, "192.0.2.254")
    cols = expand(FlowBatch.from_flows(flows).as_columns(), 10**18 + 12345, 10**12 - 1,
                  "192.0.2.254")
    assert csv_lines(cols) == csv_lines(recs) == [csv_line(r) for r in recs]
    # Records made by hand: a port past 16 bits, then a value past 64 bits
    # (which columns cannot hold) still format as csv_line does.
    r1 = recs.records[1]
    recs.records.append(r1[:R_SRCPORT] + (70000,) + r1[R_SRCPORT + 1:])
    assert csv_lines(recs) == [csv_line(r) for r in recs]
    assert csv_lines(recs)[-1].split(",")[13] == "70000"
    huge = recs.replace(recs.records + [r1[:R_SRCPORT] + (2**64,) + r1[R_SRCPORT + 1:]])
    assert csv_lines(huge) == [csv_line(r) for r in huge]
    assert csv_lines(huge)[-1].split(",")[13] == str(2**64)
    # columns holding a value a uint64 cannot (objects)
    odd = expand(FlowBatch.from_flows(flows[:3] + [flows[3]._replace(sport=2**70)]).as_columns(),
                 10**18 + 12345, 10**12 - 1, "192.0.2.254")
    assert csv_lines(odd) == [csv_line(r) for r in odd]
    assert any(line.split(",")[13] == str(2**70) for line in csv_lines(odd))
    # a prefix not in ASCII, both ways
    assert csv_lines(huge, "ü: ") == ["ü: " + csv_line(r) for r in huge]
    assert csv_lines(cols, "ü: ") == ["ü: " + csv_line(r) for r in cols]
    # And the fields read back from the line are the record's.
    for line, r in zip(csv_lines(recs), recs):
        parts = line.split(",")
        assert len(parts) == 18
        assert [int(parts[i]) for i in (0, 1, 2, 4, 5, 6, 7, 11, 12, 13, 14, 15, 16, 17)] == \
            [r[i] for i in (0, 1, 2, 4, 5, 6, 7, 11, 12, 13, 14, 15, 16, 17)]
        assert ipaddress.ip_address(parts[8]).packed == r[SRCADDR]
        assert ipaddress.ip_address(parts[9]).packed == r[DSTADDR]


@pytest.mark.parametrize("columns", [False, True], ids=["tuples", "columns"])
def test_interfaces(columns):
    """INPUT and OUTPUT are the flow's in_if and out_if, on both records of a
    translated flow; an index wider than 16 bits is 0 (unknown), counted."""
    flows = [flow("10.0.0.5", "198.51.100.7", 40000, 443, post_src="203.0.113.9",
                  post_sport=1025, in_if=2, out_if=3),
             flow("198.51.100.7", "203.0.113.9", 443, 1025, post_dst="10.0.0.5",
                  post_dport=40000, direction=REPLY, in_if=3, out_if=2),
             flow("203.0.113.9", "198.51.100.53", 5353, 53, proto=17, out_if=3),
             flow("10.0.0.6", "198.51.100.7", 1, 2, post_src="203.0.113.9", in_if=65536,
                  out_if=65535),
             flow("2001:db8::5", "2001:db8:1::80", 1, 2, in_if=4, out_if=2**40)]
    batch = FlowBatch.from_flows(flows)
    recs = expand(batch.as_columns() if columns else batch, 10**18, 10**12, "192.0.2.1")
    assert [(r[INPUT], r[OUTPUT]) for r in recs] == [(2, 3), (2, 3), (3, 2), (0, 3),
                                                     (0, 65535), (0, 65535), (4, 0)]
    assert [tuple(line.split(",")[11:13]) for line in csv_lines(recs)] == \
        [("2", "3"), ("2", "3"), ("3", "2"), ("0", "3"), ("0", "65535"), ("0", "65535"),
         ("4", "0")]
    assert csv_lines(recs) == [csv_line(r) for r in recs]
    assert [r[R_INPUT] for r in recs.records] == [2, 2, 3, 0, 0, 0, 4]
    assert recs.interfaces_zeroed == 2      # flows, not records


def test_boot_ms_from_uptime():
    assert flowtools.boot_ms_from_uptime(1248952480_737_235_000, 279737) == EX_BOOT_MS


def test_csv_lines_prefix_and_addresses_of_both_families():
    """Each line after the prefix; addresses formatted per batch: many
    distinct ones, both families in one batch, and an IPv6 address with
    the bytes of an IPv4 one (10.0.0.1 and a00:1::) told apart."""
    flows = [flow(f"10.0.{i // 256}.{i % 256}", f"192.0.2.{i % 7}", i, 80,
                  post_src="203.0.113.1", packets=i, octets=i * 10) for i in range(1, 1000)]
    flows += [flow("a00:1::", "c000:207::", 1, 2), flow("10.0.0.1", "192.0.2.7", 3, 4)]
    for make in (FlowBatch.from_flows, lambda f: FlowBatch.from_flows(f).as_columns()):
        recs = expand(make(flows), 10**18, 10**12, "192.0.2.254")
        expected = [csv_line(r) for r in recs]
        assert csv_lines(recs) == expected
        assert csv_lines(recs, "<182>x: ") == ["<182>x: " + line for line in expected]
        assert expected[-2].split(",")[8:11] == ["a00:1::", "c000:207::", "::"]
        assert expected[-1].split(",")[8:11] == ["10.0.0.1", "192.0.2.7", "0.0.0.0"]
    block = csv_block(recs, "p:")
    assert len(block) == len(expected)
    assert block.lines() == [("p:" + line).encode() for line in expected]
    assert block.head == b"p:1000000000,0,0,192.0.2.254"
    assert block.head + block.data[:int(block.ends[0])] == ("p:" + expected[0]).encode()


def test_batch_view():
    recs = expand(FlowBatch.from_flows(example_flows()), EX_NOW_NS, EX_BOOT_MS, "172.16.1.1")
    assert len(recs) == 3 and len(recs.records) == 3
    assert recs[0] == (1248952480, 737235000, 279737, ip("172.16.1.1"), 720, 38052, 136315,
                       279737, ip("10.0.195.106"), ip("74.125.6.225"), bytes(4), 0, 0, 62380,
                       80, 6, 0, 0)
    assert recs[1:] == list(recs)[1:]
    assert not expand(FlowBatch.from_flows([]), EX_NOW_NS, EX_BOOT_MS)
