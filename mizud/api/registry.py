"""The one registry of API functions, and each function's default access rule.

A function is registered once, by name, with its aliases, its parameters in
the spec's documented order (so C{param1..paramN} map onto them), its
category and its default access (the same fields as a C{tb_api} row, which
overrides them per function).  Functions the spec names that mizud does not
serve are registered too, with the reason, so C{help} and docs/api.md list
everything and the dispatcher answers C{ERROR: not supported: REASON}.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, replace
from types import MethodType
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterable, Iterator

if TYPE_CHECKING:  # pragma: no cover
    from .answer import ApiAnswer
    from .invocation import Invocation


class Category(enum.Enum):
    """The spec's four kinds of function."""

    PUBLIC = "public"
    USER = "user"
    ADMIN = "admin"
    SENSITIVE = "sensitive"


# req_user thresholds (spec, tb_api.req_user): a caller whose level is at or
# below the threshold may call the function.
REQ_DEFAULT = 0
REQ_DISABLED = 2
REQ_SRVADMIN = 4
REQ_ADMINS = 6
REQ_OWNERS = 8
REQ_SUPPORT = 10
REQ_SIPUSERS = 11
REQ_ALL = 12
REQ_PUBLIC = 14


@dataclass(frozen=True)
class Access:
    """An access rule: the fields of a C{tb_api} row (see docs/schema.md)."""

    req_key: int = 1
    req_ip: int = 0
    req_user: int = REQ_ALL
    req_user_mode: int = 0
    req_user_credit: Any = 0
    req_user_register: int | None = None
    req_user_login: int | None = None
    customsql: str = ""
    custom_action: int = 0
    custom_action_body: str = ""
    enabled: bool = True


DEFAULT_ACCESS = {
    Category.PUBLIC: Access(req_key=1, req_user=REQ_PUBLIC),
    Category.USER: Access(req_key=1, req_user=REQ_ALL),
    Category.ADMIN: Access(req_key=1, req_user=REQ_ADMINS),
    Category.SENSITIVE: Access(req_key=1, req_ip=1, req_user=REQ_ADMINS),
}

#: What the dispatcher calls: a handler bound to its area's dependencies, given the invocation.
Handler = Callable[["Invocation"], Awaitable["ApiAnswer"]]
#: A handler as a module declares it: a method of the module's area class (called with the area object).
Method = Callable[[Any, "Invocation"], Awaitable["ApiAnswer"]]


@dataclass(frozen=True)
class ApiFunction:
    """One API function as the registry knows it."""

    name: str
    category: Category
    params: tuple[str, ...]
    summary: str
    access: Access
    aliases: tuple[str, ...] = ()
    #: The handler the dispatcher calls (None until the declared method is bound, see L{Registry.bound}).
    handler: Handler | None = None
    unsupported: str | None = None
    #: Requests per second one address may send to this function (0: only the general limits).
    rate: float = 0.0
    #: The declared method (L{Functions}), before it is bound to its area object.
    method: Method | None = None

    @property
    def implemented(self) -> bool:
        """Whether mizud serves this function (a handler, or a method to bind)."""
        return self.handler is not None or self.method is not None

    @property
    def status(self) -> str:
        """C{implemented}, or C{not supported: REASON}."""
        return "implemented" if self.implemented else f"not supported: {self.unsupported}"


class Registry:
    """Functions by name and alias; the decorator registers a handler."""

    def __init__(self) -> None:
        self._functions: dict[str, ApiFunction] = {}
        self._names: dict[str, str] = {}

    def add(self, function: ApiFunction) -> None:
        """Add or replace a function (a handler replaces its catalogue entry)."""
        for name in (function.name, *function.aliases):
            owner = self._names.get(name)
            if owner is not None and owner != function.name:
                raise ValueError(f"API name {name} is already used by {owner}")
        old = self._functions.get(function.name)
        if old is not None:
            for alias in old.aliases:
                self._names.pop(alias, None)
        self._functions[function.name] = function
        for name in (function.name, *function.aliases):
            self._names[name] = function.name

    def function(
        self,
        name: str,
        category: Category,
        summary: str,
        params: tuple[str, ...] = (),
        aliases: tuple[str, ...] = (),
        access: Access | None = None,
        rate: float = 0.0,
    ) -> Callable[[Handler], Handler]:
        """Decorator: register a ready C{async def handler(invocation)} under C{name} (a stand-in in a test;
        the modules of L{mizud.api.functions} declare methods instead, see L{Functions})."""

        def register(handler: Handler) -> Handler:
            self._register(Declared(name, category, summary, params, aliases, access, rate, None), handler=handler)
            return handler

        return register

    def _register(self, declared: Declared, handler: Handler | None = None) -> None:
        existing = self._functions.get(declared.name)
        self.add(
            ApiFunction(
                name=declared.name,
                category=declared.category,
                params=declared.params or (existing.params if existing else ()),
                summary=declared.summary,
                access=declared.access or DEFAULT_ACCESS[declared.category],
                aliases=tuple(dict.fromkeys((*(existing.aliases if existing else ()), *declared.aliases))),
                handler=handler,
                rate=declared.rate,
                method=declared.method,
            )
        )

    def take(self, functions: Functions) -> None:
        """Register every handler C{functions} declared, in the order they were declared."""
        for declared in functions.declared:
            self._register(declared)

    def bound(self, areas: Iterable[object]) -> Registry:
        """A copy whose declared methods are bound to their area objects: each method to the one of C{areas}
        whose class is defined in the method's module (one area class per module, see L{Functions}).

        Raises L{ValueError} when a declared method has no area object: a function must never be listed as
        implemented and then fail on its first request.
        """
        by_module = {type(area).__module__: area for area in areas}
        copy = Registry()
        for function in self._functions.values():
            if function.method is not None:
                area = by_module.get(function.method.__module__)
                if area is None:
                    raise ValueError(f"API function {function.name}: no area object of {function.method.__module__}")
                function = replace(function, handler=MethodType(function.method, area))
            copy._functions[function.name] = function
        copy._names = dict(self._names)
        return copy

    def get(self, name: str) -> ApiFunction | None:
        """The function called C{name} (or one of its aliases), or None."""
        canonical = self._names.get(name)
        return self._functions[canonical] if canonical else None

    def __iter__(self) -> Iterator[ApiFunction]:
        return iter(sorted(self._functions.values(), key=lambda f: f.name))

    def __len__(self) -> int:
        return len(self._functions)


@dataclass(frozen=True)
class Declared:
    """A handler as a module declares it, before it is registered."""

    name: str
    category: Category
    summary: str
    params: tuple[str, ...]
    aliases: tuple[str, ...]
    access: Access | None
    rate: float
    method: Method | None


def summary_of(handler: Method) -> str:
    """A handler's one-line summary: its docstring, its lines joined."""
    return " ".join((handler.__doc__ or "").split())


class Functions:
    """The handlers of one module, declared with C{@fn(...)} on the methods of the module's one area class
    (like Klein's C{@app.route} on a class: routes bound to an instance).  Each is an C{async def name(self,
    invocation)} whose docstring is its summary in C{help}, docs/api.md and the OpenAPI document; the area
    object holds only the dependencies its handlers use, given to its constructor.  L{Registry.take}
    registers the declarations and L{Registry.bound} binds them to the area objects;
    L{mizud.api.functions} does both for every module, in one place."""

    def __init__(self) -> None:
        self.declared: list[Declared] = []

    def __call__(
        self,
        name: str,
        category: Category,
        summary: str = "",
        params: tuple[str, ...] = (),
        aliases: tuple[str, ...] = (),
        access: Access | None = None,
        rate: float = 0.0,
    ) -> Callable[[Method], Method]:
        """Decorator: declare the method C{handler} under C{name} (C{summary}: else the handler's docstring)."""

        def declare(handler: Method) -> Method:
            text = summary or summary_of(handler)
            if not text:
                raise ValueError(f"API function {name} has neither a summary nor a docstring")
            self.declared.append(Declared(name, category, text, params, aliases, access, rate, handler))
            return handler

        return declare
