"""The record batch (nfflowd/record.py): FlowBatch in its two forms, the
builder, fits."""

import numpy as np

from nfflowd.record import REPLY, Flow, FlowBatch, FlowBatchBuilder, fits

F4 = Flow(4, 6, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]), 1, 2, bytes([192, 0, 2, 1]),
          bytes([10, 0, 0, 2]), 40000, 2, 3, 300, 1000, 2000)
F6 = Flow(6, 17, bytes(15) + b"\1", bytes(15) + b"\2", 53, 5353, bytes(15) + b"\1",
          bytes(15) + b"\2", 53, 5353, 1, 80, 1000, 1000, REPLY, conn_id=7, vlan=100)


def test_tuples_and_columns_hold_the_same_records():
    rows = FlowBatch.from_flows([F4, F6])
    cols = rows.as_columns()
    assert rows.flow_list == [F4, F6] and cols.flow_list is None
    assert cols.flows() == rows.flows() == [F4, F6]
    assert len(rows) == len(cols) == 2
    assert rows.sport.tolist() == cols.sport.tolist() == [1, 53]
    assert rows.src.shape == (2, 16) and bytes(rows.src[0]) == bytes([10, 0, 0, 1]) + bytes(12)
    assert rows.sport.dtype == np.uint64


def test_values_a_uint64_cannot_hold_stay_as_they_are():
    odd = [F4._replace(packets=-1), F4._replace(octets=2**64), F4._replace(start_ms=-5)]
    batch = FlowBatch.from_flows([F4, *odd])
    assert batch.flows() == [F4, *odd]
    assert batch.as_columns().flows() == [F4, *odd]
    assert batch.packets.dtype == object
    assert fits(batch.packets, 32).tolist() == [True, False, True, True]
    assert fits(batch.octets, 64).tolist() == [True, True, False, True]
    assert fits(np.array([0, 255, 256], dtype=np.uint64), 8).tolist() == [True, True, False]


def test_a_batch_is_not_changed_by_what_is_appended_after():
    b = FlowBatchBuilder()
    b.extend([F4])
    first = b.batch()
    b.append(F6)
    assert first.flows() == [F4] and len(first) == 1
    assert b.batch().flows() == [F4, F6]
    flows = [F4]
    batch = FlowBatch.from_flows(flows)
    flows.append(F6)
    assert batch.flows() == [F4]


def test_builder_of_tuples_gives_tuples_and_with_a_block_columns():
    b = FlowBatchBuilder()
    assert not b and b.batch().flows() == [] and len(b.batch()) == 0
    b.extend([F4, F6])
    assert b.batch().flow_list == [F4, F6]
    b.add_block(FlowBatch.from_flows([F6]).as_columns())
    b.append(F4)
    assert len(b) == 4
    got = b.batch()
    assert got.flow_list is None and got.flows() == [F4, F6, F6, F4]
    b.clear()
    assert not b and len(b) == 0


def test_l7_fields_follow_their_records_through_concat_and_the_builder():
    a = FlowBatch.from_flows([F4, F6])
    a.l7 = {1: {"dns_qname": "example.com"}}
    c = FlowBatch.from_flows([F6]).as_columns()
    c.l7 = {0: {"tls_sni": "www.example.org"}}
    b = FlowBatchBuilder()
    b.extend([F4])
    b.add_block(a.as_columns())
    b.add_block(FlowBatch.from_flows([F4]).as_columns())
    b.add_block(c)
    got = b.batch()
    assert got.flows() == [F4, F4, F6, F4, F6]
    assert got.l7 == {2: {"dns_qname": "example.com"}, 4: {"tls_sni": "www.example.org"}}
    assert FlowBatch.concat([a, a]).l7 == {1: {"dns_qname": "example.com"},
                                           3: {"dns_qname": "example.com"}}
    assert FlowBatch.from_flows([F4]).l7 == {}
