"""Outcomes of hits.lua's codes, and the page rule as hits.lua takes it."""

from __future__ import annotations

import pytest

from services.counter.outcomes import HitResult, Outcome, PageRule, decode, hit_results

pytestmark = pytest.mark.unit


def test_each_code_of_hits_lua_is_one_outcome() -> None:
    assert [decode(code) for code in range(1, 6)] == [
        Outcome.COUNTED,
        Outcome.DUPLICATE,
        Outcome.RATE_LIMITED,
        Outcome.PAGE_LIMIT,
        Outcome.UNKNOWN_PAGE,
    ]


@pytest.mark.parametrize("code", [0, 6, -1])
def test_a_code_hits_lua_never_sends_is_refused(code: int) -> None:
    with pytest.raises(ValueError, match=f"code {code} "):
        decode(code)


def test_outcome_values_are_the_api_reasons_in_the_batch_tally_order() -> None:
    assert [o.value for o in Outcome] == [
        "counted",
        "duplicate",
        "rate_limited",
        "page_limit",
        "unknown_page",
        "bot",
    ]
    assert Outcome.BOT == "bot"  # a metric label and a JSON string as it is


def test_a_hits_answer_gives_one_result_per_hit_in_order() -> None:
    assert hit_results([1, 1, 7, 40, 2, 3, 41, 4, 0, 41]) == [
        HitResult(Outcome.COUNTED, 7, 40),
        HitResult(Outcome.DUPLICATE, 3, 41),
        HitResult(Outcome.PAGE_LIMIT, 0, 41),
    ]


def test_a_hits_answer_of_an_unloaded_unit_is_none() -> None:
    assert hit_results([0]) is None


def test_page_rules_as_hits_lua_takes_them_on_one_unit() -> None:
    assert PageRule.any_page().lua_arg(1) == 0
    assert PageRule.at_most(0) == PageRule.any_page()
    assert PageRule.at_most(10).lua_arg(1) == 10
    assert PageRule.only_known().lua_arg(1) == -1


def test_a_page_bound_is_shared_out_over_units_rounded_up() -> None:
    assert PageRule.at_most(10).lua_arg(4) == 3
    assert PageRule.at_most(12).lua_arg(4) == 3
    assert PageRule.at_most(1).lua_arg(16) == 1
    assert PageRule.any_page().lua_arg(4) == 0
    assert PageRule.only_known().lua_arg(4) == -1


def test_a_negative_page_bound_is_refused() -> None:
    with pytest.raises(ValueError):
        PageRule.at_most(-1)
