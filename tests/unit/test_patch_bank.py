"""A patch bank loaded back from the embedded store is the bank that was written to it."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pytest

import indexing.patch_bank as patch_bank
from indexing.patch_bank import load_bank, patch_points
from indexing.patch_search import TorchNN, UpperBounds
from indexing.store import EdgeStore


def test_a_loaded_bank_has_every_row_at_its_original_length_with_its_owner(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(patch_bank, "LOAD_BATCH", 7)  # many load steps, none aligned with an image's rows
    rng = np.random.default_rng(0)
    written: dict[tuple[str, int], np.ndarray] = {}
    with EdgeStore(tmp_path / "store") as store:
        store.create_collection("bank", 16)
        for image in range(12):
            image_id = uuid.UUID(int=image).hex
            # Lengths far from 1: the store normalises cosine vectors, the bank must undo it.
            vectors = rng.standard_normal((9, 16)).astype(np.float32) * rng.uniform(0.1, 20, (9, 1)).astype(np.float32)
            kept = np.array([0, 4, 8])
            store.upsert("bank", patch_points(image_id, f"/line-3/{image}.png", vectors, kept, grid=(3, 3)))
            written.update({(image_id, int(p)): vectors[p] for p in kept})

        bank = load_bank(store, "bank", 16, TorchNN(), UpperBounds())

    assert len(bank) == len(written) == 36
    for row, (owner, patch) in enumerate(zip(bank.image_ids, bank.patches.tolist())):
        np.testing.assert_allclose(bank.vectors[row], written[(owner, patch)], rtol=1e-5, atol=1e-5)
        assert tuple(bank.cells[row]) == divmod(patch, 3) and row in bank.rows_of(owner)
    assert sorted(len(bank.rows_of(uuid.UUID(int=i).hex)) for i in range(12)) == [3] * 12
    assert bank.sources[uuid.UUID(int=5).hex] == "/line-3/5.png"
    # The search backend holds the same rows, in the same order.
    query = written[(uuid.UUID(int=3).hex, 4)][None, :]
    distances, rows = bank.nn.run(query, 1)
    assert bank.image_ids[int(rows[0, 0])] == uuid.UUID(int=3).hex and distances[0, 0] == pytest.approx(0, abs=1e-3)

    # A nominal image added later (an upload) extends the loaded bank.
    late = rng.standard_normal((9, 16)).astype(np.float32) * 5
    bank.add(patch_points("late", "/line-3/late.png", late, np.array([2, 6]), grid=(3, 3)))
    assert len(bank) == 38 and bank.rows_of("late") == [36, 37]
    np.testing.assert_allclose(bank.vectors[bank.rows_of("late")], late[[2, 6]], rtol=1e-5, atol=1e-5)
    assert bank.nn.run(late[[6]], 1)[1][0, 0] == 37


def test_a_loaded_bank_is_held_once_on_the_cpu(tmp_path: Path) -> None:
    """The exact search and the bounds read the bank's own array instead of copies of it.

    (They reach into private state to say so: the memory itself is measured by
    benchmarks/bank_memory.py.)
    """
    rng = np.random.default_rng(3)
    with EdgeStore(tmp_path / "store") as store:
        store.create_collection("bank", 16)
        for image in range(3):
            image_id = f"img{image}"
            vectors = rng.standard_normal((8, 16)).astype(np.float32)
            store.upsert("bank", patch_points(image_id, f"{image_id}.png", vectors, np.arange(8), (4, 2)))
        bank = load_bank(store, "bank", 16, TorchNN(), UpperBounds())
        late = rng.standard_normal((8, 16)).astype(np.float32)
        for stage in ("loaded", "extended"):
            searched = bank.nn._state[0].numpy()
            assert np.shares_memory(searched, bank.vectors) and searched.shape == bank.vectors.shape, stage
            assert bank.bounds._state.rows is bank.vectors, stage
            if stage == "loaded":
                bank.add(patch_points("late", "late.png", late, np.arange(8), (4, 2)))
        assert len(bank) == 32
