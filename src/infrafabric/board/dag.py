"""Task dependencies form a directed acyclic graph; these checks keep it one."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from infrafabric.board.model import Task
from infrafabric.errors import CallerError

__all__ = ["DependencyError", "check_new_dependencies"]


class DependencyError(CallerError):
    """A dependency is unknown or would close a cycle; ``path`` shows which."""

    def __init__(self, task_id: str, detail: str, path: tuple[str, ...] = ()) -> None:
        super().__init__(f"task {task_id}: {detail}")
        self.task_id = task_id
        self.detail = detail
        self.path = path


def check_new_dependencies(batch: Sequence[Task], existing: Mapping[str, Task]) -> None:
    """Refuse a batch of new tasks whose ids are taken, whose dependencies are unknown,
    or whose dependencies (within the batch: existing tasks cannot depend on new ones)
    form a cycle."""
    ids = [task.id for task in batch]
    for task_id in ids:
        if task_id in existing:
            raise DependencyError(task_id, "a task with this id already exists")
        if ids.count(task_id) > 1:
            raise DependencyError(task_id, "this id is given to more than one new task")
    by_id = {task.id: task for task in batch}
    for task in batch:
        for dep in task.dependencies:
            if dep not in by_id and dep not in existing:
                raise DependencyError(task.id, f"depends on unknown task {dep}")
    _refuse_cycles(by_id)


def _refuse_cycles(batch: Mapping[str, Task]) -> None:
    # Depth-first search with colours (white: unseen, grey: on the path, black: done),
    # iterative so that a long chain of dependencies cannot exhaust the stack.
    colour: dict[str, int] = {}
    for root in batch:
        if colour.get(root):
            continue
        path: list[str] = [root]
        stacks = [iter(batch[root].dependencies)]
        colour[root] = 1
        while stacks:
            dep = next(stacks[-1], None)
            if dep is None:
                colour[path.pop()] = 2
                stacks.pop()
                continue
            if dep not in batch:
                continue  # an existing task: it cannot lead back into the batch
            if colour.get(dep) == 1:
                cycle = (*path[path.index(dep) :], dep)
                raise DependencyError(
                    cycle[0], "dependencies form a cycle: " + " -> ".join(cycle), cycle
                )
            if not colour.get(dep):
                colour[dep] = 1
                path.append(dep)
                stacks.append(iter(batch[dep].dependencies))
