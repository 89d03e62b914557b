"""The shared template/record layer: the IE registry, template records, sets,
padding and how many records a datagram has room for."""

import struct

import pytest
from hypothesis import given, settings, strategies as st

from nfflowd import ie
from nfflowd.record import FlowBatch
from nfflowd.template import (FLOW4, FLOW4_ICMP, FLOW6, FLOW6_ICMP, NAT4, NAT6, Template,
                              data_set, padded, records_fitting, template_set)

ALL_TEMPLATES = (FLOW4, FLOW6, FLOW4_ICMP, FLOW6_ICMP, NAT4, NAT6)

# The IANA registry (https://www.iana.org/assignments/ipfix), copied by hand:
# name -> (element id, abstract data type).
IANA = {
    "octetDeltaCount": (1, "unsigned64"), "packetDeltaCount": (2, "unsigned64"),
    "protocolIdentifier": (4, "unsigned8"), "sourceTransportPort": (7, "unsigned16"),
    "sourceIPv4Address": (8, "ipv4Address"), "destinationTransportPort": (11, "unsigned16"),
    "destinationIPv4Address": (12, "ipv4Address"), "sourceIPv6Address": (27, "ipv6Address"),
    "destinationIPv6Address": (28, "ipv6Address"), "icmpTypeCodeIPv4": (32, "unsigned16"),
    "vlanId": (58, "unsigned16"),
    "ingressInterface": (10, "unsigned32"), "egressInterface": (14, "unsigned32"),
    "flowDirection": (61, "unsigned8"),
    "ingressVRFID": (234, "unsigned32"), "egressVRFID": (235, "unsigned32"),
    "flowEndReason": (136, "unsigned8"), "icmpTypeCodeIPv6": (139, "unsigned16"),
    "flowStartMilliseconds": (152, "dateTimeMilliseconds"),
    "flowEndMilliseconds": (153, "dateTimeMilliseconds"),
    "postNATSourceIPv4Address": (225, "ipv4Address"),
    "postNATDestinationIPv4Address": (226, "ipv4Address"),
    "postNAPTSourceTransportPort": (227, "unsigned16"),
    "postNAPTDestinationTransportPort": (228, "unsigned16"),
    "natEvent": (230, "unsigned8"),
    "postNATSourceIPv6Address": (281, "ipv6Address"),
    "postNATDestinationIPv6Address": (282, "ipv6Address"),
    "observationTimeMilliseconds": (323, "dateTimeMilliseconds"),
}
NATURAL_LENGTH = {"unsigned8": 1, "unsigned16": 2, "unsigned32": 4, "unsigned64": 8, "ipv4Address": 4,
                  "ipv6Address": 16, "dateTimeMilliseconds": 8}


def test_registry_matches_iana():
    assert set(ie.ELEMENTS) == set(IANA)
    for name, entry in ie.ELEMENTS.items():
        eid, dtype = IANA[name]
        assert (entry.id, entry.length, entry.enterprise) == (eid, NATURAL_LENGTH[dtype], 0), name
        assert struct.calcsize("!" + entry.fmt) == entry.length
        assert ie.BY_ID[eid] == name
    with pytest.raises(KeyError, match="noSuchElement"):
        ie.element("noSuchElement")


def test_registry_matches_the_pypi_netflow_table():
    ipfix = pytest.importorskip("netflow.ipfix")
    for name, entry in ie.ELEMENTS.items():
        ft = ipfix.IPFIXFieldTypes.by_id(entry.id)
        assert ft is not None and ft.name == name, (name, ft)
        assert NATURAL_LENGTH[ft.type] == entry.length


def test_every_template_uses_each_element_once():
    for names in ALL_TEMPLATES:
        assert len(set(names)) == len(names)
    # no template carries fields of the other address family
    for names in (FLOW4, FLOW4_ICMP, NAT4):
        assert not any("IPv6" in n for n in names)
    for names in (FLOW6, FLOW6_ICMP, NAT6):
        assert not any("IPv4" in n for n in names)


def test_template_record_byte_exact():
    t = Template(300, ("sourceIPv4Address", "octetDeltaCount", "postNATSourceIPv6Address"))
    assert t.record == bytes.fromhex(
        "012c" "0003"           # template id 300, 3 fields
        "0008" "0004"           # sourceIPv4Address, 4 bytes
        "0001" "0008"           # octetDeltaCount, 8 bytes
        "0119" "0010")          # postNATSourceIPv6Address (281), 16 bytes
    assert t.size == 28
    assert t.struct.pack(b"\xc6\x33\x64\x07", 2**40, bytes(range(16))) == (
        bytes.fromhex("c6336407" "0000010000000000") + bytes(range(16)))


def test_template_id_range():
    with pytest.raises(ValueError):
        Template(255, ("protocolIdentifier",))
    with pytest.raises(KeyError):
        Template(256, ("protocolIdentifer",))


def test_template_set_byte_exact_and_padding():
    a = Template(256, ("protocolIdentifier",))
    b = Template(257, ("sourceTransportPort", "destinationTransportPort"))
    expected = bytes.fromhex(
        "0002" "0018"                               # set id 2, length 24
        "0100" "0001" "0004" "0001"                 # 256: protocolIdentifier/1
        "0101" "0002" "0007" "0002" "000b" "0002")  # 257: ports/2
    assert template_set(2, [a, b], pad=1) == expected
    # IANA-only template records are multiples of 4: padding never adds bytes
    assert template_set(2, [a, b], pad=4) == expected
    assert template_set(0, [a, b], pad=4)[:2] == b"\x00\x00"


def test_data_set_padding():
    t = Template(258, ("protocolIdentifier", "sourceTransportPort"))     # 3-byte records
    rows = [(6, 80), (17, 53)]
    body = "06" "0050" "11" "0035"
    assert data_set(t, rows, pad=1) == bytes.fromhex("0102" "000a" + body)
    # v9: padded to 4 bytes with zeros, the length counting the padding
    assert data_set(t, rows, pad=4) == bytes.fromhex("0102" "000c" + body + "0000")
    assert data_set(t, rows[:1] * 4, pad=4) == bytes.fromhex("0102" "0010" + "060050" * 4)


def test_padded():
    assert [padded(n, 4) for n in range(9)] == [0, 4, 4, 4, 4, 8, 8, 8, 8]
    assert [padded(n, 1) for n in range(4)] == [0, 1, 2, 3]


def test_records_fitting():
    t = Template(256, ("protocolIdentifier", "sourceTransportPort"))     # 3 bytes
    assert records_fitting(40, 16, t.size, 4) == 6  # 4 + 18 = 22 -> padded 24: fits exactly
    # 7 records would be 4 + 21 = 25 bytes, but padded to 28: only 6
    assert records_fitting(41, 16, t.size, 4) == 6
    assert records_fitting(41, 16, t.size, 1) == 7
    assert records_fitting(23, 16, t.size, 1) == 1
    assert records_fitting(22, 16, t.size, 1) == 0


@settings(max_examples=200, deadline=None)
@given(sizes=st.lists(st.sampled_from(ALL_TEMPLATES), min_size=1, max_size=6),
       max_size=st.integers(min_value=150, max_value=3000), pad=st.sampled_from([1, 4]),
       header=st.sampled_from([16, 20]))
def test_data_sets_that_fit_never_exceed_max_size(sizes, max_size, pad, header):
    """Data sets of as many records as ``records_fitting`` says, one after
    the other: one record more would not have fitted, and the datagram is
    never longer than ``max_size``."""
    off = header
    for i, names in enumerate(sizes):
        t = Template(256 + i, names)
        vals = tuple(bytes(ie.ELEMENTS[f].length) if ie.ELEMENTS[f].fmt.endswith("s") else 0
                     for f in names)
        n = records_fitting(max_size, off, t.size, pad)
        assert n >= 0
        assert n == 0 or off + padded(4 + n * t.size, pad) <= max_size
        assert off + padded(4 + (n + 1) * t.size, pad) > max_size
        if n:
            added = len(data_set(t, [vals] * n, pad))
            assert added == padded(4 + n * t.size, pad)
            off += added
            assert (off - header) % pad == 0
        assert off <= max_size


def test_vlan_templates_only_when_asked():
    """vlanId (58) is in the flow templates of an encoder made for VLAN-carrying
    flows (the pcap meter), and nowhere else: conntrack records pad nothing."""
    from nfflowd.ipfix import IpfixEncoder
    from nfflowd.record import Flow

    a = bytes([198, 51, 100, 2])
    b = bytes([203, 0, 113, 2])
    flow = Flow(4, 17, a, b, 5353, 53, a, b, 5353, 53, 3, 300, 1000, 2000, vlan=42)
    plain = IpfixEncoder(records=("flows",)).encode(FlowBatch.from_flows([flow]), [], 5000)[0]
    tagged = IpfixEncoder(records=("flows",), vlan=True).encode(FlowBatch.from_flows([flow]), [], 5000)[0]
    ie58 = (58).to_bytes(2, "big") + (2).to_bytes(2, "big")
    assert ie58 not in plain
    assert ie58 in tagged
    # one flow record, two bytes longer, ending with the VLAN id 42
    # 8 templates (4 and their zone variants) with one more field, 1 record
    assert len(tagged) - len(plain) == 8 * 4 + 2
    assert tagged.endswith((42).to_bytes(2, "big"))
