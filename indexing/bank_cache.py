"""Loaded patch banks of every setting, held under one memory budget (least recently used evicted).

A process serving many patch settings cannot keep every bank for ever: each bank
is about 7.6 kB per nominal image at the default backbone's 152-d (11 kB at 256-d;
`benchmarks/bank_memory.py`), so 50 settings of 100,000 images would hold 38 GB.
`BankCache` keeps the banks it has loaded while their estimated bytes (`bank_bytes`)
fit in `max_bytes`; loading or growing a bank past the budget evicts the least
recently used others. An evicted bank is reloaded
from the store on its setting's next request (`benchmarks/bank_load.py` measures
that load), so a verdict never fails for lack of memory: a bank larger than the
whole budget on its own is still loaded and served (every other bank is evicted),
with a warning in the log and in the counters `/metrics` reports.

The budget is per process (API and each worker hold their own cache) and counts
the banks' own arrays and bookkeeping, not the store's cache or the backbone.
A verdict already running on a bank that is evicted keeps it until it ends, so
the resident figure can exceed the budget by the banks in use at that moment.

Thread-safe: one lock guards the table; a load runs outside it under a lock of
its own setting, so one setting loading does not stall verdicts of the others,
and two requests of one setting load its bank once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from indexing.patch_bank import PatchBank, load_bank
from indexing.patch_search import NearestNeighbours, UpperBounds, default_bounds, default_nn
from indexing.store.base import Vectors

log = logging.getLogger(__name__)

# Python bookkeeping per bank row beyond its arrays: a list slot for its owner, its row number
# (an int object and a list slot in the owner's rows) and the search backends' per-row arrays
# (squared norms, IVF cell, sorted order). Checked against RSS by benchmarks/bank_budget.py.
ROW_OVERHEAD = 8 + 28 + 8 + 4 * 4
# Per nominal image: its id string (a 36-character uuid), the dict entries naming its rows and source.
IMAGE_OVERHEAD = 85 + 2 * 100


def physical_memory() -> int:
    """Bytes of physical memory of this machine (0 when the system does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


def default_budget() -> int:
    """A quarter of physical memory (1 GiB when it is unknown): the backbone, store and requests need the rest."""
    total = physical_memory()
    return total // 4 if total > 0 else 1 << 30


def bank_bytes(bank: PatchBank) -> int:
    """Estimated bytes a loaded bank holds: its arrays plus per-row and per-image bookkeeping."""
    rows = len(bank.image_ids)
    arrays = bank.vectors.nbytes + bank.patches.nbytes + bank.cells.nbytes
    return int(arrays + rows * ROW_OVERHEAD + len(bank.sources) * IMAGE_OVERHEAD)


@dataclass(frozen=True)
class CacheStats:
    """What `/metrics` reports of a cache.

    Attributes:
        bytes: estimated bytes of the banks held now.
        budget: the budget in bytes.
        banks: banks held now.
        evictions: banks evicted to stay under the budget, since start.
        loads: banks loaded from the store (first loads and reloads), since start.
        oversize: banks loaded that alone exceeded the budget, since start.
        oversize_held: 1 while a bank larger than the budget is held, else 0.
    """

    bytes: int
    budget: int
    banks: int
    evictions: int
    loads: int
    oversize: int
    oversize_held: int


class BankCache:
    """One loaded bank per setting, keyed by the collection it was loaded from, under `max_bytes` in all.

    Args:
        nn_factory: builds a fresh search backend for each bank loaded.
        bounds_factory: builds each bank's `UpperBounds`, or None for none.
        max_bytes: the budget for all banks held (`bank_bytes`); None: `default_budget()`.
        sizer: a bank's bytes (tests and benchmarks may count differently).
    """

    def __init__(
        self,
        nn_factory: Callable[[], NearestNeighbours] = default_nn,
        bounds_factory: Callable[[], UpperBounds | None] = default_bounds,
        *,
        max_bytes: int | None = None,
        sizer: Callable[[PatchBank], int] = bank_bytes,
    ) -> None:
        if max_bytes is not None and max_bytes <= 0:
            raise ValueError(f"max_bytes must be positive, got {max_bytes}")
        self._nn_factory = nn_factory
        self._bounds_factory = bounds_factory
        self.max_bytes = default_budget() if max_bytes is None else max_bytes
        self._sizer = sizer
        # setting -> (collection, bank), least recently used first.
        self._banks: OrderedDict[str, tuple[str, PatchBank]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Lock] = {}
        self._evictions = 0
        self._loads = 0
        self._oversize = 0

    def get(self, store: Vectors, setting: str, collection: str, dim: int) -> PatchBank:
        """The bank of `collection`, loaded on first use or after an eviction; a setting's older collection is dropped."""
        found = self._hit(setting, collection)
        if found is not None:
            return found
        with self._lock:
            loading = self._loading.setdefault(setting, threading.Lock())
        with loading:
            found = self._hit(setting, collection)  # another request loaded it meanwhile
            if found is not None:
                return found
            bank = load_bank(store, collection, dim, self._nn_factory(), self._bounds_factory())
            with self._lock:
                self._loads += 1
                self._banks[setting] = (collection, bank)
                self._banks.move_to_end(setting)
                self._trim(keep=setting, loaded=True)
            return bank

    def _hit(self, setting: str, collection: str) -> PatchBank | None:
        with self._lock:
            cached = self._banks.get(setting)
            if cached is None or cached[0] != collection:
                return None
            self._banks.move_to_end(setting)
            return cached[1]

    def fit(self, setting: str | None = None) -> None:
        """Evict least recently used banks until the budget holds again (after a bank grew); `setting` is kept."""
        with self._lock:
            self._trim(keep=setting, loaded=False)

    def _trim(self, *, keep: str | None, loaded: bool) -> None:
        """Under `_lock`: evict the least recently used banks but `keep` while the total exceeds the budget."""
        sizes = {setting: self._sizer(bank) for setting, (_, bank) in self._banks.items()}
        total = sum(sizes.values())
        for setting in list(self._banks):
            if total <= self.max_bytes:
                break
            if setting == keep:
                continue
            collection, _ = self._banks.pop(setting)
            total -= sizes[setting]
            self._evictions += 1
            log.info("patch bank of %s (%s, %d bytes) evicted: budget %d bytes", setting, collection,
                     sizes[setting], self.max_bytes)
        if keep is not None and keep in sizes and sizes[keep] > self.max_bytes:
            if loaded:
                self._oversize += 1
            log.warning(
                "patch bank of %s holds %d bytes, more than NOMINAL_MAX_BANK_BYTES (%d) on its own: served anyway, "
                "every other bank evicted; raise the budget", keep, sizes[keep], self.max_bytes,
            )

    def peek(self, setting: str, collection: str) -> PatchBank | None:
        """The cached bank of `collection`, or None when it is not loaded (does not count as a use)."""
        with self._lock:
            cached = self._banks.get(setting)
            return cached[1] if cached is not None and cached[0] == collection else None

    def forget(self, setting: str) -> None:
        with self._lock:
            self._banks.pop(setting, None)

    def loaded(self) -> dict[str, Any]:
        """setting -> collection currently cached, least recently used first (for tests and status)."""
        with self._lock:
            return {setting: entry[0] for setting, entry in self._banks.items()}

    def stats(self) -> CacheStats:
        with self._lock:
            sizes = [self._sizer(bank) for _, bank in self._banks.values()]
            return CacheStats(
                bytes=sum(sizes), budget=self.max_bytes, banks=len(sizes), evictions=self._evictions,
                loads=self._loads, oversize=self._oversize,
                oversize_held=int(any(size > self.max_bytes for size in sizes)),
            )
