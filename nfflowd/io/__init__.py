"""Adapters: the parts that touch sockets, files or the kernel."""
