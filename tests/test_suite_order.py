"""The suite's scheduling (tests/conftest.py): an expensive fixture's users are one xdist group, longest first."""

import types

import pytest

from tests import conftest

# a and b are shared by one test: one group of 5 + 3 s; c stays a group of its own.
FIXTURES = {"a": 5.0, "b": 3.0, "c": 20.0}


def _item(nodeid, *fixturenames):
    item = types.SimpleNamespace(nodeid=nodeid, fixturenames=["tmp_path", *fixturenames], marks=[])
    item.add_marker = item.marks.append
    return item


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


def test_a_test_taking_two_shared_fixtures_joins_their_users(items):
    groups, seconds = conftest._shared_fixture_groups(items)
    assert groups[0] is None and groups[-1] is None
    assert groups[1] == groups[4] == groups[5] != groups[2]
    assert seconds[groups[1]] == 8.0 and seconds[groups[2]] == 20.0


def test_units_go_longest_first_with_a_group_together_and_marked(items):
    profile = {"t.py::long": 12.0, "t.py::uses_b": 1.0}
    conftest._units_longest_first(items, lambda item: profile.get(item.nodeid, 0))
    order = [item.nodeid.split("::")[1] for item in items]
    # c (20 s), the long test (12 s), a+b (5 + 3 + 1 s), then the rest in collection order.
    assert order == ["uses_c", "long", "uses_b", "uses_a", "uses_a_and_b", "alone", "also_alone"]
    groups = {
        name: [mark.kwargs.get("name", mark.args[0] if mark.args else None) for mark in item.marks]
        for name, item in zip(order, items)
    }
    assert groups["long"] == [] and groups["uses_c"] == ["c"]
    assert groups["uses_a"] == groups["uses_b"] == groups["uses_a_and_b"] != groups["uses_c"]


@pytest.mark.parametrize(
    "nodeid, test",
    [
        ("t.py::uses_a@a", "t.py::uses_a"),
        ("t.py::uses_a[x@y]@a", "t.py::uses_a[x@y]"),
        ("t.py::alone[x@y]", "t.py::alone[x@y]"),
    ],
)
def test_the_suite_report_names_a_grouped_test_without_its_group(nodeid, test):
    assert conftest._without_group(nodeid) == test
