"""The Qdrant server store's search params as a function of a collection's size, and where the threshold is read.

No Qdrant server runs here: what the server does with these params is untested; this
checks that the store asks for exact search at or below NOMINAL_APPROXIMATE_ABOVE and for
HNSW + int8 codes with rescoring above it.
"""

from __future__ import annotations

import uuid

import numpy as np
import pytest
from qdrant_client import QdrantClient

from deployment.config import Config
from indexing.store import Point, ServerStore
from indexing.store.approximate import APPROXIMATE, DEFAULT_APPROXIMATE_ABOVE, EXACT, candidate_count, nlist_for
from indexing.store.server import search_params

pytestmark = [
    pytest.mark.filterwarnings("ignore:Local mode performs exact"),
    pytest.mark.filterwarnings("ignore:Payload indexes have no effect"),
]


def test_exact_up_to_the_threshold_then_quantized_with_rescoring() -> None:
    assert search_params(100_000, 100_000).exact is True
    above = search_params(100_001, 100_000)
    assert not above.exact
    assert above.quantization is not None and above.quantization.rescore is True
    assert search_params(10**9, 0).exact is True  # 0: the switch is off
    assert search_params(10**9, None).exact is True


def test_candidates_and_lists() -> None:
    assert candidate_count(1) == 50 and candidate_count(10) == 50 and candidate_count(20) == 100
    assert nlist_for(100) == 16 and nlist_for(1_000_000) == 1000


def test_threshold_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOMINAL_APPROXIMATE_ABOVE", raising=False)
    assert Config(_env_file=None).approximate_above == DEFAULT_APPROXIMATE_ABOVE == 100_000
    monkeypatch.setenv("NOMINAL_APPROXIMATE_ABOVE", "2000")
    assert Config(_env_file=None).approximate_above == 2000


def test_server_store_reports_its_mode_by_count() -> None:
    with ServerStore(QdrantClient(":memory:"), approximate_above=5) as store:
        store.create_collection("c", 4)
        rng = np.random.default_rng(0)
        rows = rng.standard_normal((6, 4)).astype(np.float32)
        store.upsert("c", [Point(id=str(uuid.uuid4()), vector=row) for row in rows[:5]])
        assert store.search_mode("c") == EXACT
        store.upsert("c", [Point(id=str(uuid.uuid4()), vector=rows[5])])
        assert store.prepare_search("c") == APPROXIMATE  # the count is re-read after this process's write
        assert len(store.search("c", rows[:2], 3)[0]) == 3
