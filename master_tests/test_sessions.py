"""The master's session registry: lookups by id and by worker, forgotten when ended."""

from __future__ import annotations

import types

from buildbot_msgproto.sessions import SessionRegistry


def fake_driver(session_id: str, worker: str, suspended: bool = False) -> types.SimpleNamespace:
    session = types.SimpleNamespace(session_id=session_id, worker_name=worker,
                                    is_suspended=suspended, may_be_resumed=True)
    return types.SimpleNamespace(session=session, end_callbacks=[])


def end(driver: types.SimpleNamespace) -> None:
    for callback in driver.end_callbacks:
        callback("normal", "done", False)


def test_sessions_by_worker_and_their_end():
    registry = SessionRegistry()
    a1, a2 = fake_driver("s1", "a"), fake_driver("s2", "a", suspended=True)
    b1 = fake_driver("s3", "b")
    for driver in (a1, a2, b1):
        registry.add(driver)
    assert len(registry) == 3
    assert set(map(id, registry.of_worker("a"))) == {id(a1), id(a2)}
    assert registry.suspended("a") == [a2] and registry.suspended("b") == []
    assert registry.find("s3", "b") is b1 and registry.find("s3", "a") is None
    end(a2)
    assert registry.of_worker("a") == [a1] and registry.suspended("a") == []
    end(a1)
    assert registry.of_worker("a") == [] and len(registry) == 1
    assert registry.all() == [b1]


def test_a_replaced_session_id_is_not_forgotten_by_the_old_driver():
    registry = SessionRegistry()
    old, new = fake_driver("s1", "a"), fake_driver("s1", "a")
    registry.add(old)
    registry.add(new)
    end(old)
    assert registry.of_worker("a") == [new] and registry.find("s1", "a") is new


def test_many_workers_are_looked_up_without_scanning():
    registry = SessionRegistry()
    drivers = [fake_driver(f"s{i}", f"w{i}") for i in range(2000)]
    for driver in drivers:
        registry.add(driver)
    # a lookup touches only that worker's sessions: the others are never asked
    for driver in drivers[1:]:
        driver.session = None  # any access would fail
    assert registry.of_worker("w0") == [drivers[0]]
