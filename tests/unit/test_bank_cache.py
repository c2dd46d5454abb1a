"""Patch banks of many settings held under one byte budget: LRU eviction, reload on demand, oversize served."""

from __future__ import annotations

import logging
import threading
import uuid
from pathlib import Path

import numpy as np
import pytest

import indexing.bank_cache as bank_cache
from indexing.bank_cache import BankCache, bank_bytes
from indexing.patch_bank import patch_points
from indexing.patch_search import TorchNN, UpperBounds
from indexing.store import EdgeStore

DIM = 16


def fill(store: EdgeStore, collection: str, images: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    store.create_collection(collection, DIM)
    for image in range(images):
        vectors = rng.standard_normal((9, DIM)).astype(np.float32)
        store.upsert(collection, patch_points(uuid.UUID(int=seed * 1000 + image).hex, f"{image}.png", vectors,
                                              np.array([0, 4, 8]), grid=(3, 3)))


@pytest.fixture
def store(tmp_path: Path):
    with EdgeStore(tmp_path / "store") as opened:
        for number, name in enumerate("abc"):
            fill(opened, f"bank-{name}", 10, number + 1)
        yield opened


def cache(max_bytes: int) -> BankCache:
    return BankCache(TorchNN, UpperBounds, max_bytes=max_bytes)


def test_least_recently_used_banks_are_evicted_and_reloaded_the_same(store: EdgeStore) -> None:
    one = bank_bytes(cache(1 << 30).get(store, "a", "bank-a", DIM))
    banks = cache(int(2.5 * one))  # room for two of the three banks
    first = {name: banks.get(store, name, f"bank-{name}", DIM) for name in "ab"}
    assert banks.stats().evictions == 0 and list(banks.loaded()) == ["a", "b"]
    banks.get(store, "a", "bank-a", DIM)  # a is now the most recently used
    banks.get(store, "c", "bank-c", DIM)
    assert list(banks.loaded()) == ["a", "c"]  # b, least recently used, went
    stats = banks.stats()
    assert stats.evictions == 1 and stats.loads == 3 and stats.banks == 2 and stats.bytes <= stats.budget
    reloaded = banks.get(store, "b", "bank-b", DIM)
    assert reloaded is not first["b"] and banks.stats().loads == 4
    np.testing.assert_array_equal(reloaded.vectors, first["b"].vectors)
    assert reloaded.image_ids == first["b"].image_ids
    query = np.random.default_rng(9).standard_normal((5, DIM)).astype(np.float32)
    for found, expected in zip(reloaded.nn.run(query, 3), first["b"].nn.run(query, 3)):
        np.testing.assert_array_equal(found, expected)


def test_a_bank_that_grows_past_the_budget_evicts_the_others(store: EdgeStore) -> None:
    one = bank_bytes(cache(1 << 30).get(store, "a", "bank-a", DIM))
    banks = cache(int(2.5 * one))
    grown = banks.get(store, "a", "bank-a", DIM)
    banks.get(store, "b", "bank-b", DIM)
    rng = np.random.default_rng(5)
    grown.add(patch_points("late", "late.png", rng.standard_normal((90, DIM)).astype(np.float32),
                           np.arange(0, 90, 3), grid=(9, 10)))
    banks.fit("a")
    assert list(banks.loaded()) == ["a"] and banks.stats().evictions == 1


def test_a_bank_larger_than_the_whole_budget_is_served_with_a_warning(store: EdgeStore, caplog) -> None:
    banks = cache(100)
    banks.get(store, "a", "bank-a", DIM)
    with caplog.at_level(logging.WARNING, logger=bank_cache.__name__):
        bank = banks.get(store, "b", "bank-b", DIM)
    assert len(bank) == 30 and list(banks.loaded()) == ["b"]
    stats = banks.stats()
    assert stats.oversize == 2 and stats.oversize_held == 1 and stats.evictions == 1
    assert any("more than NOMINAL_MAX_BANK_BYTES" in record.message for record in caplog.records)


def test_concurrent_requests_of_one_setting_load_its_bank_once(store: EdgeStore) -> None:
    banks = cache(1 << 30)
    found, barrier = [], threading.Barrier(6)

    def ask(name: str) -> None:
        barrier.wait()
        found.append((name, banks.get(store, name, f"bank-{name}", DIM)))

    threads = [threading.Thread(target=ask, args=(name,)) for name in "aabbcc"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert banks.stats().loads == 3
    for name in "abc":
        assert len({id(bank) for owner, bank in found if owner == name}) == 1


def test_a_setting_whose_alias_moved_gets_the_new_collection(store: EdgeStore) -> None:
    banks = cache(1 << 30)
    banks.get(store, "a", "bank-a", DIM)
    moved = banks.get(store, "a", "bank-b", DIM)
    assert banks.loaded() == {"a": "bank-b"}
    assert set(moved.image_ids) == {uuid.UUID(int=2000 + image).hex for image in range(10)}


def test_the_default_budget_is_a_quarter_of_physical_memory() -> None:
    total = bank_cache.physical_memory()
    assert total > 0 and bank_cache.default_budget() == total // 4
    with pytest.raises(ValueError):
        BankCache(max_bytes=0)
