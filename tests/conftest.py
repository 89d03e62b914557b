"""Shared test hygiene."""
import pytest
import structlog


@pytest.fixture(autouse=True)
def _structlog_defaults():
    """A test that runs the daemon's or the meter's code in-process configures
    structlog to print to its stderr, which pytest captures and closes after
    the test: every later log line would then raise. Each test starts from
    structlog's defaults."""
    yield
    structlog.reset_defaults()
