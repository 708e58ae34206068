"""Checking a whole witness log against its signed checkpoints, and finding the first
entry that was changed, deleted or moved.

Every entry is read once: its leaf hash is recomputed and compared with the stored one,
its ``index`` field with its position; the tree is rebuilt from the recomputed leaves and
compared with the stored subtree hashes and with the root of every signed checkpoint
(whose signatures are checked with the fabric's verifier key). The report names the
lowest index at which anything disagrees.

The log must also still be able to prove every entry and to grow: every complete subtree
of the log (the log stores each one above the leaves) must be stored, and no row may lie
outside the tree (an entry row at a negative index or past a gap, a subtree row whose
level or index names no subtree of the log).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from infrafabric.witness.checkpoint import Checkpoint, CheckpointError, open_checkpoint
from infrafabric.witness.entry import decode_entry
from infrafabric.witness.log import MerkleLog
from infrafabric.witness.merkle import LeafHashes, leaf_hash, range_hash

__all__ = ["AuditReport", "audit_log"]

_PAGE = 10_000


@dataclass
class AuditReport:
    """What an audit found. ``first_bad_index`` is exact when an entry itself shows the
    damage (it no longer matches its leaf hash, says it is another entry, or is missing).
    When an entry was edited *and* its leaf hash rewritten to match, only the tree shows
    it: the index is then the first of the smallest damaged subtree, moved up to the end
    of the longest prefix a signed checkpoint still vouches for (at worst the entry just
    before the damaged one)."""

    size: int = 0
    checkpoints: int = 0
    problems: list[str] = field(default_factory=list)
    exact: list[int] = field(default_factory=list)
    ranges: list[tuple[int, int]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_index(self) -> int | None:
        if self.exact:
            return min(self.exact)
        if not self.ranges:
            return None
        end = min(high for _, high in self.ranges)  # the damage closest to the start
        return max(low for low, _ in self.ranges if low < end)

    def bad(self, index: int, problem: str) -> None:
        self.problems.append(problem)
        self.exact.append(index)

    def bad_within(self, low: int, high: int, problem: str) -> None:
        self.problems.append(problem)
        self.ranges.append((low, high))


def audit_log(log: MerkleLog, key: str, anchor: Checkpoint | None = None) -> AuditReport:
    """Audit ``log`` against its signed checkpoints (verified with ``key``) and, if given,
    ``anchor``: a checkpoint kept outside the log (already verified by the caller). Only
    an anchor shows a log truncated together with its later checkpoints, or rewritten
    past the last checkpoint it still holds."""
    report = AuditReport()
    if log.damaged:
        report.problems.append(f"the log cannot grow: {log.damaged}")
    leaves: list[bytes] = []
    position = 0
    while True:
        page = log.entries(position, position + _PAGE)
        if not page:
            # Rows past a gap longer than a page, or past the size the log keeps (Redis):
            # entries(position, ...) was empty, yet rows lie beyond.
            (_, _), (after, lowest) = log.entries_outside(position)
            if not after:
                break
            if lowest == position and log.refresh() > position:  # appended meanwhile
                continue
            report.bad(
                position,
                f"entries {position} to {lowest - 1} are missing"
                if lowest > position
                else f"{after} entry rows lie past the log's end, {position}",
            )
            return report
        for index, stored_leaf, entry in page:
            if index != position:
                report.bad(position, f"entries {position} to {index - 1} are missing")
                return report  # the positions no longer line up; nothing after is meaningful
            leaf = leaf_hash(entry)
            leaves.append(leaf)
            if leaf != stored_leaf:
                report.bad(index, f"entry {index} does not match its stored leaf hash")
            try:
                claimed = decode_entry(entry).index
            except msgspec.MsgspecError:
                report.bad(index, f"entry {index} is not a witness entry")
            else:
                if claimed != index:
                    report.bad(index, f"entry {index} says it is entry {claimed}: moved")
            position += 1
    report.size = position
    if log.size > position:
        report.bad(position, f"the log has {log.size} entries, but only {position} remain")
    (below, highest), _ = log.entries_outside(position)
    if below:
        report.problems.append(
            f"{below} entry rows at negative indexes (the highest {highest}), outside"
            f" the log: it holds {position + below} entry rows for {position} entries"
        )
    tree = LeafHashes(leaves)
    _check_subtrees(report, log, tree)
    vouched = 0  # entries [0, vouched) give the root of a signed checkpoint
    for size, note in reversed(log.checkpoints(limit=1 << 62)):
        report.checkpoints += 1
        try:
            checkpoint = open_checkpoint(note, key)
        except CheckpointError as exc:
            report.problems.append(f"checkpoint at size {size}: {exc}")
            continue
        if checkpoint.size != size:
            report.problems.append(f"checkpoint stored at size {size} is for {checkpoint.size}")
        elif size > position:
            report.bad(position, f"checkpoint at size {size}, but only {position} entries remain")
        elif range_hash(0, size, tree) != checkpoint.root:
            report.bad_within(vouched, size, f"the entries before {size} do not give its root")
        elif not report.ranges:
            vouched = size
    if anchor is not None:
        _check_anchor(report, tree, anchor, vouched)
    return report


def _check_subtrees(report: AuditReport, log: MerkleLog, tree: LeafHashes) -> None:
    """Every stored subtree must be one of the log's and match its entries, and every
    complete subtree above the leaves (the log stores each one when its last entry
    arrives) must be stored: without it the log cannot prove the entries below it, nor
    grow if it is on the right edge."""
    size = report.size
    # seen[level][index]: subtree level/index is stored (levels 1 to the highest complete)
    seen = {level: bytearray(size >> level) for level in range(1, size.bit_length())}
    for level, index, stored in log.stored_nodes():
        if level < 1 or index < 0:
            report.problems.append(
                f"a stored subtree row {level}/{index} names no subtree (its level must be"
                " at least 1, its index at least 0)"
            )
        elif level >= size.bit_length() or (index + 1) << level > size:
            report.bad(size, f"subtree {level}/{index} covers entries that are gone")
        else:
            seen[level][index] = 1
            if tree.perfect(level, index) != stored:
                first, end = index << level, (index + 1) << level
                report.bad_within(first, end, f"subtree {level}/{index} does not match its entries")
    for level, stored_at in seen.items():
        index = stored_at.find(0)
        while index >= 0:
            first, end = index << level, (index + 1) << level
            report.bad_within(
                first,
                end,
                f"subtree {level}/{index} (entries {first} to {end - 1}) is missing:"
                " the log cannot prove them",
            )
            index = stored_at.find(0, index + 1)


def _check_anchor(report: AuditReport, tree: LeafHashes, anchor: Checkpoint, vouched: int) -> None:
    """The log must still hold the tree ``anchor`` signed: at least that many entries,
    whose root is the anchor's."""
    if anchor.size > report.size:
        report.bad(
            report.size,
            f"the saved checkpoint signs {anchor.size} entries, but only {report.size} remain:"
            " the log was truncated",
        )
    elif range_hash(0, anchor.size, tree) != anchor.root:
        report.bad_within(
            vouched if vouched < anchor.size else 0,
            anchor.size,
            f"the entries before {anchor.size} do not give the saved checkpoint's root:"
            " the log was rewritten",
        )
