"""The wiring: the daemon loop, configuration, control and service files."""
