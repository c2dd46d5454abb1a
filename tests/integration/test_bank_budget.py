"""Several patch settings under a small bank budget: real weights, real Hazelnut Toy images, the embedded store.

The budget evicts banks and reloads them on demand, and every verdict is the one a
service holding every bank gives; /metrics shows the bytes held and the evictions.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from indexing.bank_cache import BankCache, bank_bytes
from indexing.service import BackbonePool, NominalService
from indexing.settings import alias_name
from indexing.store import EdgeStore
from tests.integration.test_api import files_of, jpgs, make_client, wait_job

pytestmark = pytest.mark.slow

SETTINGS = ("line-1", "line-2", "line-3")


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory, pool: BackbonePool, hazelnut_sets) -> Iterator[Path]:
    """A store holding three patch settings, each indexed on its own 6 Hazelnut Toy training images."""
    path = tmp_path_factory.mktemp("budget") / "store"
    with EdgeStore(path) as store:
        service = NominalService(store, backbones=pool)
        for number, name in enumerate(SETTINGS):
            service.put_setting(name, scoring="patch")
            service.index(name, hazelnut_sets["train"][6 * number : 6 * number + 6])
    yield path


def test_a_small_budget_evicts_and_reloads_with_the_same_verdicts(three: Path, pool: BackbonePool, hazelnut_sets) -> None:
    probe = hazelnut_sets["defect"][:2] + hazelnut_sets["good"][:2]
    with EdgeStore(three) as store:
        everything = NominalService(store, backbones=pool, bank_cache=BankCache(max_bytes=1 << 30))
        expected = {name: everything.inspect(name, probe, k=2) for name in SETTINGS}
        sizes = {
            name: bank_bytes(everything.patches.cache.peek(name, store.resolve_alias(alias_name(name, kind="patch"))))
            for name in SETTINGS
        }
        assert everything.patches.cache.stats().evictions == 0

        # Room for the largest bank and a half: at most two banks at a time, and asking in turn evicts every time.
        budget = int(1.5 * max(sizes.values()))
        cache = BankCache(max_bytes=budget)
        service = NominalService(store, backbones=pool, bank_cache=cache)
        for _round in range(2):
            for name in SETTINGS:
                verdicts = service.inspect(name, probe, k=2)
                assert cache.stats().bytes <= budget
                for found, want in zip(verdicts, expected[name]):
                    assert found.verdict == want.verdict
                    assert found.score == pytest.approx(want.score, rel=1e-6)
                    assert [n.id for n in found.neighbours] == [n.id for n in want.neighbours]
        stats = cache.stats()
        assert stats.evictions >= 4 and stats.loads == stats.evictions + stats.banks and stats.oversize == 0
        assert len(cache.loaded()) <= 2

        # A budget smaller than any bank: every verdict is still answered, and the oversize signal is up.
        tiny = BankCache(max_bytes=1)
        service = NominalService(store, backbones=pool, bank_cache=tiny)
        for name in SETTINGS:
            scores = [v.score for v in service.inspect(name, probe)]
            np.testing.assert_allclose(scores, [v.score for v in expected[name]], rtol=1e-6)
        assert tiny.stats().oversize == 3 and tiny.stats().oversize_held == 1 and len(tiny.loaded()) == 1


def test_metrics_report_the_bytes_held_and_the_evictions(tmp_path: Path, hazelnut: Path) -> None:
    train = jpgs(hazelnut / "train" / "good")
    with make_client(tmp_path, NOMINAL_MAX_BANK_BYTES=1) as client:
        for number, name in enumerate(("p1", "p2")):
            assert client.put(f"/v1/settings/{name}", json={"scoring": "patch"}).status_code == 201
            job = client.post(f"/v1/settings/{name}/images", files=files_of(train[5 * number : 5 * number + 5])).json()
            assert wait_job(client, job["job_id"])["state"] == "succeeded"
        probe = files_of([hazelnut / "test" / "colour" / "00.jpg"])
        for name in ("p1", "p2", "p1"):
            assert client.post(f"/v1/settings/{name}/inspect", files=probe).status_code == 200
        text = client.get("/metrics").text
    lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if line.startswith("nominal_patch")}
    assert lines["nominal_patch_bank_bytes"] > 1
    assert lines["nominal_patch_bank_budget_bytes"] == 1
    assert lines["nominal_patch_bank_evictions_total"] >= 2
    assert lines["nominal_patch_bank_oversize"] == 1 and lines["nominal_patch_bank_oversize_loads_total"] >= 3
    assert lines["nominal_patch_banks_loaded"] == 1
