"""Exit codes of the remote CLI (docs/cli.md lists them; scripts branch on them)."""

from __future__ import annotations

OK = 0
FAILED = 1
"""The server answered 5xx or refused for another reason, or the command failed otherwise."""
USAGE = 2
"""A bad flag or value, or no usable configuration (no server, no token, a bad config file)."""
UNAUTHENTICATED = 3
"""401: the token is wrong, expired or revoked."""
FORBIDDEN = 4
"""403: the caller's role or cluster scope does not allow it."""
NOT_FOUND = 5
"""404: no such object."""
CONFLICT = 6
"""409 or 412: the object's state or version does not allow it (try again after reading it)."""
UNREACHABLE = 7
"""No connection, a timeout, or a server whose certificate is not from the pinned CA."""

_BY_STATUS = {401: UNAUTHENTICATED, 403: FORBIDDEN, 404: NOT_FOUND, 409: CONFLICT, 412: CONFLICT}


def for_status(status: int) -> int:
    """The exit code of an HTTP error answer."""
    return _BY_STATUS.get(status, FAILED)


class ClientError(Exception):
    """One line for stderr and the exit code it ends the command with."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.code = code


class ApiFailure(ClientError):  # noqa: N818 - a failure the API answered, said as such
    """The API answered with an error (a problem document, or anything else)."""

    def __init__(
        self,
        status: int,
        reason: str,
        detail: str,
        *,
        problems: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(f"{detail} ({reason})", for_status(status))
        self.status = status
        self.reason = reason
        self.detail = detail
        self.problems = problems
        """A problem document's ``problems`` as (JSON pointer, message), e.g. of a fleet
        document the server refused (``invalid_document``)."""
