"""The task board: pure state machine, time passed in, no I/O.

:mod:`.model` holds the values (tasks, blockers, milestones, events), :mod:`.transitions`
the one table of legal moves, :mod:`.dag` the dependency checks and :mod:`.rules` the
operations (claim, heartbeat, progress, block, complete, fail, expire, release...). Each
operation takes tasks and returns new task values plus the events to publish; a store
applies them atomically with compare-and-set on (state, version).
"""
