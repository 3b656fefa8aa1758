"""``@record``: the value classes' semantics, which the core's messages rely on."""

from __future__ import annotations

import copy
import dataclasses
import pickle

import pytest

from taskmaster.core.events import BatchDone, JobFailed, TaskSent
from taskmaster.record import FrozenError, field, fields, record, replace


@record
class Point:
    """A docstring of its own."""

    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)

    @property
    def norm1(self) -> int:
        return abs(self.x) + abs(self.y)


@record
class Other:
    x: int
    y: int = 0
    tags: list[str] = field(default_factory=list)


@record(frozen=False)
class Counter:
    n: int = 0


@record(frozen=False, eq=False)
class Handle:
    name: str


def test_fields_by_position_or_name_with_defaults_and_fresh_factories() -> None:
    a, b = Point(1), Point(x=1, y=0)
    assert (a.x, a.y, a.tags) == (1, 0, [])
    assert a == b
    assert a.tags is not b.tags  # a fresh list each
    assert Point(1, 2, ["t"]).tags == ["t"]
    assert [f.name for f in fields(Point)] == ["x", "y", "tags"] == list(Point.__match_args__)
    assert [f.type for f in fields(Point)] == ["int", "int", "list[str]"]  # as written
    assert Point(3, -4).norm1 == 7
    assert Point.__doc__ == "A docstring of its own."
    assert Point.__qualname__ == "Point" and Point.__module__ == __name__
    with pytest.raises(TypeError):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        Point(1, z=2)  # type: ignore[call-arg]


def test_equality_is_by_value_and_by_type() -> None:
    assert Point(1, 2) == Point(1, 2)
    assert Point(1, 2) != Point(2, 1)
    assert Point(1, 2) != Other(1, 2)  # type: ignore[comparison-overlap]  # another type
    assert Point(1, 2) != (1, 2, [])  # type: ignore[comparison-overlap]
    assert hash(TaskSent(1, 0, 1, "pickle", b"p")) == hash(TaskSent(1, 0, 1, "pickle", b"p"))
    assert len({JobFailed(0, "e", "tb"), JobFailed(0, "e", "tb"), JobFailed(1, "e", "tb")}) == 2


def test_a_frozen_record_refuses_assignment_and_has_no_dict() -> None:
    p = Point(1)
    with pytest.raises(FrozenError, match="'x' of a Point"):
        p.x = 2  # type: ignore[misc]
    with pytest.raises(FrozenError):
        del p.x
    with pytest.raises(AttributeError):
        p.z = 1  # type: ignore[attr-defined]
    assert not hasattr(p, "__dict__")
    assert isinstance(FrozenError("x"), AttributeError)  # as dataclasses' own error is


def test_mutable_records() -> None:
    c = Counter()
    c.n += 2
    assert c == Counter(2)
    with pytest.raises(TypeError):
        hash(c)  # mutable with value equality: unhashable, as a dataclass
    with pytest.raises(AttributeError):
        c.other = 1  # type: ignore[attr-defined]  # slots
    h = Handle("a")
    h.name = "b"
    assert h != Handle("b") and hash(h) == object.__hash__(h)  # identity
    assert {h: 1}[h] == 1


def test_pickle_and_copy_round_trips() -> None:
    done = BatchDone(7, 0.5, (JobFailed(3, "ValueError: x", "tb"),))
    for proto in (2, 5):
        assert pickle.loads(pickle.dumps(done, protocol=proto)) == done
    p = Point(1, 2, ["a"])
    assert copy.copy(p) == p
    deep = copy.deepcopy(p)
    assert deep == p and deep.tags is not p.tags
    c = pickle.loads(pickle.dumps(Counter(5)))
    c.n = 6
    assert c == Counter(6)


def test_repr_names_every_field() -> None:
    assert repr(Point(1, 2)) == "Point(x=1, y=2, tags=[])"
    assert repr(Handle("w")) == "Handle(name='w')"


def test_what_a_class_defines_itself_it_keeps() -> None:
    @record
    class Shown:
        text: str

        def __repr__(self) -> str:
            return self.text

    assert repr(Shown("as written")) == "as written"
    assert Shown("a") == Shown("a")  # the rest is still made


def test_hidden_fields_metadata_and_post_init() -> None:
    @record
    class Keyed:
        name: str
        key: bytes = field(repr=False)
        level: int = field(default=1, metadata={"help": "how loud"})

        def __post_init__(self) -> None:
            if self.level < 0:
                raise ValueError("level < 0")

    k = Keyed("a", b"secret")
    assert repr(k).endswith(".Keyed(name='a', level=1)")  # the key is never shown
    assert k.key == b"secret" and k == Keyed("a", b"secret")
    assert [f.metadata for f in fields(Keyed)] == [{}, {}, {"help": "how loud"}]
    with pytest.raises(ValueError, match="level < 0"):
        Keyed("a", b"k", -1)
    with pytest.raises(ValueError):
        replace(k, level=-2)  # checked again


def test_match_by_position_and_name() -> None:
    match Point(1, 2):
        case Point(1, y):
            assert y == 2
        case _:
            pytest.fail("no match")


def test_replace_checks_names_and_runs_init_again() -> None:
    p = Point(1, 2, ["a"])
    q = replace(p, y=5)
    assert q == Point(1, 5, ["a"]) and p.y == 2
    with pytest.raises(TypeError, match="no field z"):
        replace(p, z=1)

    @dataclasses.dataclass(frozen=True)
    class Checked:
        n: int

        def __post_init__(self) -> None:
            if self.n < 0:
                raise ValueError("n < 0")

    assert replace(Checked(1), n=2) == Checked(2)
    with pytest.raises(ValueError):
        replace(Checked(1), n=-1)


def test_a_field_without_a_default_after_one_with_is_refused() -> None:
    with pytest.raises(TypeError, match="'b' without a default follows a default"):

        @record
        class Bad:
            a: int = 0
            b: int  # type: ignore[misc]
