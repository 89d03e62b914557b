"""One exception root for the whole package.

Errors on the data path (a malformed netlink message, a failed send) are caught
at the stage boundary, counted and logged; they never stop the loop.  Errors at
start-up (a bad config, no permission to subscribe) stop it with a clear message.
"""


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


class DecodeError(NfflowdError):
    """Bytes that cannot be decoded (skipped and counted by the caller)."""


class SourceError(NfflowdError):
    """A flow source (netlink socket, capture) cannot be opened or read."""
