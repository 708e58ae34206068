"""Dependencies: unknown ids and cycles are refused when tasks are created."""

from __future__ import annotations

import pytest

from infrafabric.board.dag import DependencyError, check_new_dependencies
from infrafabric.board.model import Task


def task(task_id: str, *deps: str) -> Task:
    return Task(id=task_id, title=task_id, dependencies=deps)


def test_a_chain_and_a_diamond_are_fine() -> None:
    check_new_dependencies([task("a"), task("b", "a"), task("c", "a"), task("d", "b", "c")], {})
    check_new_dependencies([task("e", "d")], {"d": task("d")})


@pytest.mark.parametrize(
    ("batch", "cycle"),
    [
        ([task("a", "a")], ("a", "a")),
        ([task("a", "b"), task("b", "a")], ("a", "b", "a")),
        ([task("a", "b"), task("b", "c"), task("c", "a"), task("d", "a")], ("a", "b", "c", "a")),
    ],
    ids=["self", "pair", "triangle"],
)
def test_cycles_are_refused_with_their_path(batch: list[Task], cycle: tuple[str, ...]) -> None:
    with pytest.raises(DependencyError, match="cycle") as caught:
        check_new_dependencies(batch, {})
    assert caught.value.path == cycle


def test_unknown_dependencies_and_taken_ids_are_refused() -> None:
    with pytest.raises(DependencyError, match="unknown task z"):
        check_new_dependencies([task("a", "z")], {})
    with pytest.raises(DependencyError, match="already exists"):
        check_new_dependencies([task("a")], {"a": task("a")})
    with pytest.raises(DependencyError, match="given to more than one new task"):
        check_new_dependencies([task("a"), task("a")], {})


def test_a_long_chain_does_not_exhaust_the_stack() -> None:
    chain = [task("t0")] + [task(f"t{i}", f"t{i - 1}") for i in range(1, 5_000)]
    check_new_dependencies(chain, {})
    with pytest.raises(DependencyError, match="cycle"):
        check_new_dependencies([*chain[1:], task("t0", "t4999")], {})
