"""Joining a Ray cluster, in-process: ray.init is replaced, so no cluster is needed."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("ray")

from taskmaster.errors import UsageError  # noqa: E402
from taskmaster.ray import cluster  # noqa: E402


class FakeInit:
    """ray.init that fails with ``errors`` in turn, then joins."""

    def __init__(self, *errors: BaseException) -> None:
        self.errors = list(errors)
        self.calls: list[str] = []

    def __call__(self, address: str, **_: Any) -> None:
        self.calls.append(address)
        if self.errors:
            raise self.errors.pop(0)


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Any:
    def install(*errors: BaseException) -> FakeInit:
        init = FakeInit(*errors)
        monkeypatch.setattr(cluster.ray, "init", init)
        monkeypatch.setattr(cluster.ray, "cluster_resources", lambda: {"CPU": 4.0})
        monkeypatch.setattr(cluster.ray, "nodes", lambda: [{"Alive": True}, {"Alive": False}])
        monkeypatch.setattr(cluster, "disconnect", lambda: None)
        monkeypatch.setattr(cluster, "CLIENT_PAUSE", 0.0)
        return init

    return install


ABORTED = ConnectionAbortedError("Initialization failure from server:\n")


@pytest.mark.timeout(10)
def test_ray_client_server_failing_as_it_starts_is_tried_again(fake: Any) -> None:
    init = fake(ABORTED, ABORTED)
    joined = cluster.connect("ray://127.0.0.1:10001")
    assert init.calls == ["ray://127.0.0.1:10001"] * 3
    assert (joined.cpus, joined.nodes) == (4, 1)


@pytest.mark.timeout(10)
def test_ray_client_giving_up_after_the_last_try_says_what_to_do(fake: Any) -> None:
    init = fake(*[ABORTED] * cluster.CLIENT_TRIES)
    with pytest.raises(UsageError, match="could not join the Ray cluster.*ray start --head"):
        cluster.connect("ray://127.0.0.1:10001")
    assert len(init.calls) == cluster.CLIENT_TRIES


@pytest.mark.timeout(10)
def test_an_address_that_is_not_ray_client_is_tried_once(fake: Any) -> None:
    init = fake(ABORTED)
    with pytest.raises(UsageError, match="could not join"):
        cluster.connect("127.0.0.1:6379")
    assert init.calls == ["127.0.0.1:6379"]


@pytest.mark.timeout(10)
def test_a_refused_connection_is_not_tried_again(fake: Any) -> None:
    init = fake(ConnectionRefusedError("refused"), ABORTED)
    with pytest.raises(UsageError, match=r"could not join the Ray cluster \(refused\)"):
        cluster.connect("ray://127.0.0.1:10001")
    assert len(init.calls) == 1
