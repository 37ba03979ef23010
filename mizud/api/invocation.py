"""What a handler is given for one request: the request, the function it called, and the proven caller.

Named for what it is, one invocation of an API function; a phone call is a
L{mizud.sip.calls.PlacedCall}.  The parameter helpers decode the spec's
two ways of naming a parameter (by name, or by position C{paramN} in the
function's documented order) and answer the spec's errors for missing or
malformed values.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..store.billing import User
from ..text import ascii_int
from . import answer
from .credentials import Caller
from .registry import ApiFunction
from .request import ApiRequest, RequestError


@dataclass(frozen=True)
class Invocation:
    """One invocation of a handler: the request, the function, the caller."""

    request: ApiRequest
    function: ApiFunction
    caller: Caller

    def arg(self, name: str, default: str = "") -> str:
        """A parameter by name, or by position (C{paramN}) in the documented order."""
        value = self.request.params.get(name)
        if value:
            return value
        if name in self.function.params:
            value = self.request.params.get(f"param{self.function.params.index(name) + 1}")
            if value:
                return value
        return default

    def user(self) -> User:
        """The user the request acts for; raises L{RequestError} (421) when there is none."""
        if self.caller.user is None:
            raise RequestError("this function needs authid (the user)", answer.MISSING_PARAMETER)
        return self.caller.user

    def require(self, name: str) -> str:
        """A parameter that must be present; raises L{RequestError} (421) if not."""
        value = self.arg(name)
        if not value:
            raise RequestError(f"missing parameter: {name}", answer.MISSING_PARAMETER)
        return value

    def integer(self, name: str, low: int, high: int, default: int | None = None) -> int:
        """A whole number from C{low} to C{high} in ASCII digits; 412 naming the parameter otherwise.

        Missing: C{default}, or 421 when there is none.
        """
        text = self.arg(name).strip()
        if not text:
            if default is None:
                raise RequestError(f"missing parameter: {name}", answer.MISSING_PARAMETER)
            return default
        value = ascii_int(text, low, high)
        if value is None:
            raise RequestError(f"{name} must be a whole number from {low} to {high}", answer.FAILED)
        return value
