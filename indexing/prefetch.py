"""`prefetched`: prepare the next batch on a thread while the caller works on this one.

Reading files and decoding images (PIL and zlib release the GIL) then hide
behind the forward pass on a CPU worker, instead of adding to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

Item = TypeVar("Item")
Prepared = TypeVar("Prepared")


def prefetched(prepare: Callable[[Item], Prepared], items: Sequence[Item]) -> Iterator[Prepared]:
    """`prepare(item)` for each item in order, the next one computed on a thread while this one is used."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nominal-prefetch") as pool:
        pending = pool.submit(prepare, items[0]) if items else None
        for i in range(len(items)):
            assert pending is not None
            ready = pending.result()
            pending = pool.submit(prepare, items[i + 1]) if i + 1 < len(items) else None
            yield ready
