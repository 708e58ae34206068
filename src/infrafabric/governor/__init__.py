"""The governor: capability-aware assignment, budgets, circuit breakers, reputation,
under a YAML policy (``docs/governor.md``).

:mod:`.policy` loads and validates the policy, :mod:`.matching` holds the coverage and
ranking rules, :mod:`.core` the state machine (no I/O, time passed in), and
:mod:`.driver` runs it inside a fabric: fed with board events, its decisions logged and
witnessed, its state kept in the store.
"""
