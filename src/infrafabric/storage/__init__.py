"""Stores: where the board's tasks and events live. One protocol, several engines.

:class:`~.base.Store` states what every engine guarantees; :class:`~.memory.MemoryStore`
is for tests and throwaway swarms, :class:`~.sqlite.SqliteStore` is the default (one
file, WAL, acknowledged writes survive ``kill -9``). A Redis engine follows in a later
issue without touching the board's rules: they only see :class:`~infrafabric.board.rules.Outcome`.
"""
