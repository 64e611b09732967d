"""
Say how a call to Coder failed, in the project's own terms; callers never see an aiohttp type.

``CoderRejectedError`` carries Coder's ``codersdk.Response`` fields exactly
(``message``, ``detail``, ``validations``; codersdk/client.go) for answers
that retrying will not change (4xx but 429); ``WorkspaceGoneError`` is its
410. ``CoderUnavailableError`` means "not now": 5xx, 429, refused or broken
connections, timeouts, a watch that ended; ``retry_after_s`` is Coder's
``Retry-After`` when it sent one. ``CoderProtocolError`` means Coder answered
something this client cannot read. No text here ever contains the session
token: messages are built from Coder's answer and the URL, never from headers.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Validation:
    """
    Name one refused field, as ``codersdk.ValidationError``: its ``field`` and ``detail``.
    """

    field: str
    detail: str


class CoderError(Exception):
    """
    Raise when a call to Coder fails.
    """


class CoderRejectedError(CoderError):
    """
    Raise when Coder refused the request (4xx other than 429): sending it again will not help.
    """

    def __init__(
        self,
        status_code: int,
        message: str,
        detail: str = "",
        validations: Iterable[Validation] = (),
    ) -> None:
        self.status_code = status_code
        self.message = message
        self.detail = detail
        self.validations = tuple(validations)
        super().__init__(self._text())

    def _text(self) -> str:
        text = f"Coder answered {self.status_code}: {self.message}"
        if self.detail:
            text += f" ({self.detail})"
        for validation in self.validations:
            text += f"; {validation.field}: {validation.detail}"
        return text


class WorkspaceGoneError(CoderRejectedError):
    """
    Raise when Coder answers 410: the workspace was deleted.
    """


class CoderUnavailableError(CoderError):
    """
    Raise when Coder cannot answer now (5xx, 429, connection or timeout); retrying later may work.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        retry_after_s: float | None = None,
        detail: str = "",
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.retry_after_s = retry_after_s
        self.detail = detail
        text = message if status_code is None else f"Coder answered {status_code}: {message}"
        if detail:
            text += f" ({detail})"
        if retry_after_s is not None:
            text += f"; retry after {retry_after_s:g} s"
        super().__init__(text)


class CoderProtocolError(CoderError):
    """
    Raise when Coder's answer cannot be read (not the JSON or the shape this client expects).
    """
