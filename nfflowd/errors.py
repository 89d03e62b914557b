"""One exception root for the whole package.

Errors on the data path (a malformed netlink message, a failed send) are caught
at the stage boundary, counted and logged; they never stop the loop.  Errors at
start-up (a bad config, no permission to subscribe) stop it with a clear message.
"""

import re

# C0, DEL and C1 control characters (newline, escape, ...): refused in the
# configuration's strings and escaped in text from elsewhere before it is
# printed or logged (a newline forges a line, an escape drives the terminal).
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with each control character escaped (``\\x1b``)."""
    return CONTROL_CHARS.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class NfflowdError(Exception):
    """Root of every error nfflowd raises on purpose."""


class ConfigError(NfflowdError):
    """The configuration is invalid.  ``str()`` names the file and the key."""

    def __init__(self, path, problems):
        self.path = str(path)
        self.problems = list(problems)  # [(key, message), ...]
        lines = [f"{self.path}: {key}: {msg}" if key else f"{self.path}: {msg}"
                 for key, msg in self.problems]
        super().__init__("\n".join(lines))


class SourceError(NfflowdError):
    """A flow source (netlink socket, capture) cannot be opened or read."""
