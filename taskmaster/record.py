"""``@record``: the slotted value classes of taskmaster, made at a tenth of a dataclass's cost.

``@dataclass(frozen=True, slots=True)`` compiles six functions per class (``__init__``,
``__repr__``, ``__eq__``, ``__hash__``, ``__setattr__``, ``__delattr__``) and then builds the
class a second time for its slots: about 0.7 ms a class here, 22 ms of every ``tm-run``'s
start for the 31 classes it loads. ``@record`` compiles one ``__init__`` per class and shares
the rest, written once below, among all of them.

What a record is: its fields are its annotations, in order, with the class attributes as
defaults. ``field()`` gives a default made fresh per instance (``default_factory``), a
field kept out of the repr (a secret), or metadata (``Options`` keeps its command-line help
there). A record has ``__slots__``, an ``__init__`` taking the fields by position or name
(then calling ``__post_init__`` if the class has one), ``__repr__``, ``__match_args__``, and
by default value equality, a hash and no assignment after ``__init__`` (``frozen``).
``eq=False`` keeps identity equality and hash; ``frozen=False`` allows assignment (with
equality it then has no hash, as a dataclass). What the class defines itself (a
``__repr__``) it keeps. ``fields()`` and ``replace()`` are those of ``dataclasses``. Type
checkers see a dataclass (``dataclass_transform``), so an assignment to a frozen record is
a mypy error as well as a runtime one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, overload

if TYPE_CHECKING:
    from typing_extensions import dataclass_transform
else:

    def dataclass_transform(**_: Any) -> Callable[[Any], Any]:
        return lambda f: f


T = TypeVar("T")
MISSING: Any = object()  # a field without a default


class FrozenError(AttributeError):
    """An assignment to a field of a frozen record."""


class Field:
    """One field of a record: its name, its annotation (text), its default, its metadata."""

    __slots__ = ("name", "type", "default", "default_factory", "repr", "metadata")

    def __init__(
        self,
        default: Any = MISSING,
        default_factory: Callable[[], Any] | None = None,
        repr: bool = True,  # noqa: A002 - the name dataclasses.field uses
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        self.name = ""
        self.type: Any = None
        self.default = default
        self.default_factory = default_factory
        self.repr = repr
        self.metadata: Mapping[str, Any] = metadata or {}


@overload
def field(*, default: T, repr: bool = True, metadata: Mapping[str, Any] | None = None) -> T: ...


@overload
def field(
    *,
    default_factory: Callable[[], T],
    repr: bool = True,
    metadata: Mapping[str, Any] | None = None,
) -> T: ...


@overload
def field(*, repr: bool = True, metadata: Mapping[str, Any] | None = None) -> Any: ...


def field(
    *,
    default: Any = MISSING,
    default_factory: Callable[[], Any] | None = None,
    repr: bool = True,  # noqa: A002 - the name dataclasses.field uses
    metadata: Mapping[str, Any] | None = None,
) -> Any:
    """A field with more than a plain default, as ``dataclasses.field``: a default made fresh
    for each instance, one left out of the repr (a secret), or metadata; typed as the value
    it stands for."""
    return Field(default, default_factory, repr, metadata)


def _repr(self: Any) -> str:
    inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__record_repr__)
    return f"{type(self).__qualname__}({inner})"


def _values(self: Any) -> tuple[Any, ...]:
    return tuple([getattr(self, name) for name in self.__match_args__])


def _eq(self: Any, other: Any) -> Any:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _frozen_setattr(self: Any, name: str, value: Any) -> None:
    raise FrozenError(f"cannot assign to field {name!r} of a {type(self).__qualname__}")


def _frozen_delattr(self: Any, name: str) -> None:
    raise FrozenError(f"cannot delete field {name!r} of a {type(self).__qualname__}")


def _reduce(self: Any) -> tuple[Any, ...]:
    return (type(self), _values(self))  # through __init__: frozen slots take no setattr


def _fields(cls: type) -> tuple[Field, ...]:
    """A Field per annotation, in order (ClassVar is not a field)."""
    out = []
    for name, hint in cls.__dict__.get("__annotations__", {}).items():
        if str(hint).startswith(("ClassVar", "typing.ClassVar")):
            continue
        value = cls.__dict__.get(name, MISSING)
        f = value if isinstance(value, Field) else Field(default=value)
        f.name, f.type = name, hint
        out.append(f)
    return tuple(out)


def _init(cls: type, fields: tuple[Field, ...], frozen: bool) -> Callable[..., None]:
    """The one compiled function: ``__init__``, setting each field in order, then calling
    ``__post_init__`` if the class has one."""
    params: list[str] = []
    body: list[str] = []
    env: dict[str, Any] = {"_set": object.__setattr__, "_UNSET": MISSING}
    for f in fields:
        name = f.name
        if f.default_factory is not None:
            env[f"_make_{name}"] = f.default_factory
            params.append(f"{name}=_UNSET")
            value = f"_make_{name}() if {name} is _UNSET else {name}"
        elif f.default is not MISSING:
            env[f"_default_{name}"] = f.default
            params.append(f"{name}=_default_{name}")
            value = name
        elif params and "=" in params[-1]:
            raise TypeError(f"{cls.__qualname__}: {name!r} without a default follows a default")
        else:
            params.append(name)
            value = name
        body.append(f"_set(self, {name!r}, {value})" if frozen else f"self.{name} = {value}")
    if hasattr(cls, "__post_init__"):
        body.append("self.__post_init__()")
    source = f"def __init__(self, {', '.join(params)}):\n    " + "\n    ".join(body or ["pass"])
    namespace: dict[str, Any] = {}
    exec(source, env, namespace)  # noqa: S102 - our own fixed template over field names
    init: Callable[..., None] = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


@overload
def record(cls: type[T], /) -> type[T]: ...


@overload
def record(*, frozen: bool = True, eq: bool = True) -> Callable[[type[T]], type[T]]: ...


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[T] | None = None, /, *, frozen: bool = True, eq: bool = True) -> Any:
    """Make ``cls`` a record (see the module's docstring); usable bare or with options."""

    def make(cls: type[T]) -> type[T]:
        fields = _fields(cls)
        names = tuple(f.name for f in fields)
        body = {
            k: v
            for k, v in cls.__dict__.items()
            if k not in names and k not in ("__dict__", "__weakref__")
        }
        made_here: dict[str, Any] = {"__repr__": _repr, "__reduce__": _reduce}
        if eq:
            made_here.update(__eq__=_eq, __hash__=_hash if frozen else None)
        if frozen:
            made_here.update(__setattr__=_frozen_setattr, __delattr__=_frozen_delattr)
        # what the class defines itself it keeps, as with a dataclass (a __repr__ of its own)
        body = {**made_here, **body, "__slots__": names, "__match_args__": names}
        body["__record_fields__"] = fields
        body["__record_repr__"] = tuple(f.name for f in fields if f.repr)
        if "__init__" not in body:
            body["__init__"] = _init(cls, fields, frozen)
        made = type(cls.__name__, cls.__bases__, body)
        made.__qualname__ = cls.__qualname__
        return made

    return make if cls is None else make(cls)


def fields(obj: Any) -> tuple[Field, ...]:
    """The fields of a record (or record class), in order, as ``dataclasses.fields``."""
    found: tuple[Field, ...] = obj.__record_fields__
    return found


def replace(obj: T, **changes: Any) -> T:
    """A copy of ``obj`` (a record, or a dataclass whose fields all take a position) with
    ``changes`` to some of its fields; made through ``__init__``, so it is checked again."""
    names = obj.__match_args__  # type: ignore[attr-defined]  # a record's, or a dataclass's
    unknown = set(changes).difference(names)
    if unknown:
        raise TypeError(f"{type(obj).__qualname__} has no field {', '.join(sorted(unknown))}")
    values = {name: getattr(obj, name) for name in names}
    values.update(changes)
    return type(obj)(**values)
