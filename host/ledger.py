"""The one allocation ledger (C2 allocations and loans, C3 top-ups and reserve draws), kept by the host.

Why the host keeps it: an allocation is the result of *applying* a plan (an admission the engine really executed,
a top-up it recorded), so it belongs to the host, and both hosts must keep it by the same rules or a result in one
says nothing about the other. Policies read it back through the views (``RunningView.kv_allocated``,
``kv_lent``, ``lender``, ``reserve_drawn``); they keep no allocation state of their own.

Units: an allocation counts the request's *private* KV over its lifetime — prompt tokens beyond the prefix the
radix cache held when it was admitted (``cached``), plus the output it is allowed to grow into. A shared prefix is
physically used once and is never part of anyone's allocation, so requests sharing it are not charged for it again.

Loans (C2 reuse): a *guest* may live inside a *lender*'s allocated-but-unused tail (pairwise, the paper's rule) or
inside the batch's tails as a whole (``BATCH``, the pool-level rule). A pairwise lender's own room excludes what it
lent; a guest's room is its own allocation. Outstanding KV — promised but not yet used — is what a host holds free
for running requests in its admission budget::

    own request:      max(alloc - private_used - lent, 0)
    pairwise guest:   max(alloc - private_used, 0)          (inside its lender's tail, which excludes it)
    batch guest:      0                                     (inside the batch's tails, already held for others)
"""

from __future__ import annotations

from dataclasses import dataclass

BATCH = "*batch*"  # the lender of a guest that lives in the tails of the whole running batch


@dataclass(slots=True)
class Allocation:
    alloc: int  # private tokens allocated (admission + top-ups)
    cached: int = 0  # prefix tokens the radix cache held at admission (not part of alloc)
    lender: str | None = None  # None: its own allocation; a rid or BATCH: a loan (C2)
    drawn: int = 0  # tokens of its top-ups drawn from the global reserve (C3)
    output: int = 0  # output tokens its admitted allocation covered (a policy's bound, for its timeline)


class AllocationLedger:
    """Allocations of live requests (admitted and not finished or preempted)."""

    __slots__ = ("_entries", "_guests", "dirty")

    def __init__(self) -> None:
        self._entries: dict[str, Allocation] = {}
        self._guests: dict[str, list[str]] = {}  # pairwise lender -> its live guests
        self.dirty: set[str] = set()  # requests whose ledger fields changed (hosts that cache views drain it)

    # --- applying plans ----------------------------------------------------------------------------------------
    def commit(self, rid: str, alloc: int, cached: int = 0, lender: str | None = None, output: int = 0) -> None:
        """An admission was executed. A continued chunk of an already admitted request keeps its allocation."""
        if rid in self._entries:
            return
        if alloc < 0 or cached < 0:
            raise ValueError(f"allocation of {rid!r}: negative tokens ({alloc}, cached {cached})")
        if lender is not None and lender != BATCH and lender not in self._entries:
            lender = None  # the lender left before the guest was executed: the guest stands on its own
        self._entries[rid] = Allocation(alloc, cached, lender, 0, output)
        self.dirty.add(rid)
        if lender is not None and lender != BATCH:
            self._guests.setdefault(lender, []).append(rid)
            self.dirty.add(lender)

    def topup(self, rid: str, tokens: int, from_reserve: bool = False) -> bool:
        """Extend a live allocation; False when ``rid`` holds none (it finished meanwhile)."""
        e = self._entries.get(rid)
        if e is None:
            return False
        if tokens < 0:
            raise ValueError(f"top-up of {rid!r}: negative tokens ({tokens})")
        e.alloc += tokens
        if from_reserve:
            e.drawn += tokens
        self.dirty.add(rid)
        return True

    def release(self, rid: str) -> Allocation | None:
        """The request finished or was preempted: its allocation, loans and reserve draws return. Its pairwise
        guests become independent (their allocation now counts on its own; the lender's KV was freed)."""
        e = self._entries.pop(rid, None)
        if e is None:
            return None
        if e.lender is not None and e.lender != BATCH:
            guests = self._guests.get(e.lender)
            if guests is not None:
                guests.remove(rid)
                if not guests:
                    del self._guests[e.lender]
            self.dirty.add(e.lender)
        for g in self._guests.pop(rid, ()):
            self._entries[g].lender = None
            self.dirty.add(g)
        return e

    def retain(self, live: set[str] | frozenset[str]) -> list[str]:
        """Release every entry not in ``live`` (a host's reconciliation after requests left by other paths)."""
        gone = [rid for rid in self._entries if rid not in live]
        for rid in gone:
            self.release(rid)
        return gone

    # --- reading -----------------------------------------------------------------------------------------------
    def __contains__(self, rid: object) -> bool:
        return rid in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, rid: str) -> Allocation | None:
        return self._entries.get(rid)

    def lent(self, rid: str) -> int:
        """Tokens of ``rid``'s allocation lent to its live pairwise guests."""
        guests = self._guests.get(rid)
        if not guests:
            return 0
        return sum(self._entries[g].alloc for g in guests)

    def drawn_total(self) -> int:
        return sum(e.drawn for e in self._entries.values())

    def outstanding(self, rid: str, seq_len: int) -> int:
        """Tokens promised to ``rid`` and not used yet (see module docstring); 0 for an unknown request."""
        e = self._entries.get(rid)
        if e is None or e.lender == BATCH:
            return 0
        used = seq_len - e.cached
        if e.lender is None:
            return max(e.alloc - used - self.lent(rid), 0)
        return max(e.alloc - used, 0)

    def allocated_total(self, rid: str) -> int | None:
        """``cached + alloc`` (same units as a view's ``kv_used``), or None when ``rid`` holds no allocation."""
        e = self._entries.get(rid)
        return None if e is None else e.cached + e.alloc
