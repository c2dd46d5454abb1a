"""`prefetched` keeps order, prepares ahead on another thread, and passes errors through."""

from __future__ import annotations

import threading

import pytest

from indexing.prefetch import prefetched


def test_results_come_in_order_and_the_next_is_prepared_while_this_one_is_used() -> None:
    prepared_on: list[int] = []
    second_started = threading.Event()

    def prepare(item: int) -> int:
        prepared_on.append(threading.get_ident())
        if item == 2:
            second_started.set()
        return item * 10

    stream = prefetched(prepare, [1, 2, 3])
    assert next(stream) == 10
    assert second_started.wait(timeout=10), "item 2 is prepared while the caller still holds item 1"
    assert list(stream) == [20, 30]
    assert threading.get_ident() not in prepared_on
    assert list(prefetched(prepare, [])) == []


def test_an_error_preparing_an_item_reaches_the_caller_at_that_item() -> None:
    def prepare(item: int) -> int:
        if item == 2:
            raise ValueError("bad batch")
        return item

    stream = prefetched(prepare, [1, 2, 3])
    assert next(stream) == 1
    with pytest.raises(ValueError, match="bad batch"):
        next(stream)
