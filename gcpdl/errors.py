"""Domain exceptions.

Everything below ``gcpdl.cli`` raises these; the CLI turns them into one ``Error:`` line
(plus an optional fix line) and an exit code. Messages are written for a learner: say what
went wrong and what to do, never dump a raw API payload.
"""

from __future__ import annotations


class GcpdlError(Exception):
    """Base class. ``fix`` is an optional second line: a command to run or a page to open."""

    exit_code = 1

    def __init__(self, message: str, fix: str | None = None):
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:  # one line, always
        return self.message


class InvalidInput(GcpdlError):
    """The user asked for something that cannot work; detected before any API call."""

    exit_code = 2


class ConfigError(GcpdlError):
    exit_code = 2


class CredentialsError(GcpdlError):
    pass


class NotFound(GcpdlError):
    pass


class PermissionDenied(GcpdlError):
    pass


class ApiDisabled(GcpdlError):
    pass


class QuotaExceeded(GcpdlError):
    pass


class Stockout(GcpdlError):
    """No capacity for the request in any zone that was tried."""


class Conflict(GcpdlError):
    pass


class OperationFailed(GcpdlError):
    """A long-running Compute operation ended in error; ``code`` is the API's error code."""

    def __init__(self, message: str, code: str | None = None, fix: str | None = None):
        super().__init__(message, fix)
        self.code = code


class DeadlineExceeded(GcpdlError):
    pass


class Aborted(GcpdlError):
    """The user said no at a prompt."""


class SshError(GcpdlError):
    pass


class HostKeyMismatch(SshError):
    pass


class SyncError(GcpdlError):
    pass


class SyncIncomplete(SyncError):
    """The sync ran to its end but some listed objects are not in DEST: exit 3, never 0."""

    exit_code = 3


class VmNotRunning(GcpdlError):
    """The VM exists but is stopped (or still starting): SSH and Jupyter cannot reach it."""
