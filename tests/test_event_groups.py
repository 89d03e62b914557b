"""Which conntrack events the daemon subscribes to (conntrack.new_events)."""

from __future__ import annotations

import pytest

from nfflowd.app import config
from nfflowd.app.daemon import event_groups
from nfflowd.errors import ConfigError
from nfflowd.io.netlink import NFNLGRP_CONNTRACK_DESTROY as DESTROY
from nfflowd.io.netlink import NFNLGRP_CONNTRACK_NEW as NEW


@pytest.mark.parametrize("new_events, timestamps, nat_events, groups", [
    (True, True, False, (NEW, DESTROY)),        # the default: NEW events too
    (True, False, True, (NEW, DESTROY)),
    (False, True, False, (DESTROY,)),           # nothing needs NEW events
    (False, True, True, (NEW, DESTROY)),        # NAT create events
    (False, False, False, (NEW, DESTROY)),      # start times from NEW events
    (False, False, True, (NEW, DESTROY)),
])
def test_new_events_are_left_out_only_where_nothing_needs_them(new_events, timestamps,
                                                                nat_events, groups):
    assert event_groups(new_events, timestamps, nat_events) == groups


def test_new_events_is_a_boolean_on_by_default():
    assert config.parse({}).conntrack.new_events is True
    assert config.parse({"conntrack": {"new_events": False}}).conntrack.new_events is False
    with pytest.raises(ConfigError, match="conntrack.new_events"):
        config.parse({"conntrack": {"new_events": "no"}})
