"""The suite's dealing (tests/conftest.py): an expensive fixture's users go together into one worker's first run."""

import types

import pytest

from tests import conftest

# a and b are shared by one test: one group of 5 + 3 s; c is a group of its own.
FIXTURES = {"a": 5.0, "b": 3.0, "c": 20.0}
PROFILE = {"t.py::long": 12.0, "t.py::uses_b": 1.0}


def _item(nodeid, *fixturenames):
    return types.SimpleNamespace(nodeid=nodeid, fixturenames=["tmp_path", *fixturenames])


@pytest.fixture
def items(monkeypatch):
    monkeypatch.setattr(conftest, "SHARED_FIXTURES", FIXTURES)
    return [
        _item("t.py::alone"),
        _item("t.py::uses_b", "b"),
        _item("t.py::uses_c", "c"),
        _item("t.py::long"),
        _item("t.py::uses_a", "a"),
        _item("t.py::uses_a_and_b", "a", "b"),
        _item("t.py::also_alone"),
    ]


def _names(items):
    return [item.nodeid.split("::")[1] for item in items]


def test_a_test_taking_two_shared_fixtures_joins_their_users(items):
    groups, seconds = conftest._shared_fixture_groups(items)
    assert groups[0] is None and groups[-1] is None
    assert groups[1] == groups[4] == groups[5] != groups[2]
    assert seconds[groups[1]] == 8.0 and seconds[groups[2]] == 20.0


def test_units_are_the_groups_and_the_profiled_tests_longest_first(items):
    units, rest = conftest._units_longest_first(items, lambda item: PROFILE.get(item.nodeid, 0))
    # c (20 s), the long test (12 s), a+b (5 + 3 s and uses_b's 1 s); the rest in collection order.
    assert [(seconds, _names(members)) for seconds, members in units] == [
        (20.0, ["uses_c"]),
        (12.0, ["long"]),
        (9.0, ["uses_b", "uses_a", "uses_a_and_b"]),
    ]
    assert _names(rest) == ["alone", "also_alone"]


def test_a_unit_goes_whole_to_the_worker_expected_to_finish_first_with_room(items):
    units, _ = conftest._units_longest_first(items, lambda item: PROFILE.get(item.nodeid, 0))
    runs, left = conftest._deal(units, workers=2, first_run=3)
    assert [_names(run) for run in runs] == [["uses_c"], ["long"]] and _names(left) == [
        "uses_b",
        "uses_a",
        "uses_a_and_b",
    ]  # three tests do not fit beside c nor beside the long test
    runs, left = conftest._deal(units, workers=2, first_run=4)
    assert [_names(run) for run in runs] == [["uses_c"], ["long", "uses_b", "uses_a", "uses_a_and_b"]] and not left


def test_the_first_runs_are_filled_from_the_rest_in_collection_order(items):
    config = types.SimpleNamespace(workerinput={"workercount": 2})
    conftest._longest_first(config, items)  # 7 tests: first runs of 2 (xdist's minimum), none in the profile
    # c's run is topped up with the first unshared test, the other run with the next two; a+b did not fit.
    assert _names(items) == ["uses_c", "alone", "long", "also_alone", "uses_b", "uses_a", "uses_a_and_b"]
