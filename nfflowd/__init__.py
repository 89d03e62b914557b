"""nfflowd: netfilter conntrack (and pcap) to NetFlow v5/v9/IPFIX and a syslog mirror."""

__version__ = "0.1.0"
