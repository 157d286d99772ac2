"""The suite's own scheduling (tests/conftest.py): which tests share a worker under `-n 2`."""

import types

from tests import conftest


def _item(nodeid, *fixtures):
    return types.SimpleNamespace(nodeid=nodeid, fixturenames=["tmp_path", *fixtures])


def test_fixtures_one_test_needs_together_are_one_group_and_other_tests_none():
    items = [
        _item("a::audit_only", "audited"),
        _item("a::both", "audited", "trained_run"),
        _item("t::run_only", "trained_run"),
        _item("t::averaged", "averaged_run"),
        _item("b::baselines", "trained"),
        _item("x::plain", "built_records"),
    ]
    groups = conftest._fixture_groups(items)
    # audited and trained_run on one worker: as two groups, "a::both" made the other's fixture a second time.
    assert groups == {
        "a::audit_only": "audited+trained_run",
        "a::both": "audited+trained_run",
        "t::run_only": "audited+trained_run",
        "t::averaged": "averaged_run",
        "b::baselines": "trained",
    }
    assert conftest._fixture_groups(items[2:]) == {  # no test needs two: each fixture its own group
        "t::run_only": "trained_run",
        "t::averaged": "averaged_run",
        "b::baselines": "trained",
    }
