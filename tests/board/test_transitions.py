"""The transition table: every legal move listed once, every other move refused by name."""

from __future__ import annotations

import itertools

import pytest

from infrafabric.board.model import TaskState
from infrafabric.board.transitions import TRANSITIONS, IllegalTransition, TaskEvent, next_state


def test_final_states_have_no_way_out() -> None:
    for (state, _event), _target in TRANSITIONS.items():
        assert not state.final


def test_every_state_is_reachable_and_every_event_used() -> None:
    assert set(TRANSITIONS.values()) | {TaskState.WAITING} == set(TaskState)
    assert {event for _, event in TRANSITIONS} == set(TaskEvent)


@pytest.mark.parametrize(("state", "event"), list(itertools.product(TaskState, TaskEvent)))
def test_illegal_moves_name_task_state_and_event(state: TaskState, event: TaskEvent) -> None:
    if (state, event) in TRANSITIONS:
        assert next_state("t-1", state, event) is TRANSITIONS[(state, event)]
        return
    with pytest.raises(IllegalTransition) as caught:
        next_state("t-1", state, event)
    assert (caught.value.task_id, caught.value.state, caught.value.event) == ("t-1", state, event)
    assert "t-1" in str(caught.value)
    assert str(state) in str(caught.value)
