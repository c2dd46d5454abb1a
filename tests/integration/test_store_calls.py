"""A warm verdict makes at most two store calls (each a round trip on a Qdrant server; four for a fused one),
and stays current.

`CountingStore` is the real embedded store with a tally of the calls made on it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from indexing.service import BackbonePool, NominalService
from indexing.store import EdgeStore

pytestmark = pytest.mark.slow


class CountingStore:
    """An `EdgeStore` that counts the calls made on it, by method."""

    def __init__(self, path: Path) -> None:
        self._store = EdgeStore(path)
        self.calls: Counter[str] = Counter()

    @property
    def shared(self) -> bool:
        return self._store.shared

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._store, name)
        if not callable(method):
            return method

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] += 1
            return method(*args, **kwargs)

        return counted


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    counting = CountingStore(tmp_path / "store")
    yield counting
    counting.close()


def calls_of(store: CountingStore, call) -> Counter[str]:  # noqa: ANN001
    store.calls.clear()
    call()
    return Counter(store.calls)


@pytest.mark.parametrize("calibrated", [True, False])
@pytest.mark.parametrize("scoring", ["global", "patch", "fused"])
def test_a_warm_inspection_makes_at_most_two_store_calls(
    store: CountingStore, pool: BackbonePool, hazelnut_sets, scoring: str, calibrated: bool
) -> None:
    service = NominalService(store, backbones=pool)
    service.put_setting("line", k=1, scoring=scoring)
    service.index("line", hazelnut_sets["train"][:6])
    if calibrated:
        made = service.calibrate("line", pass_images=hazelnut_sets["good"][:3], fail_images=hazelnut_sets["defect"][:3])
        service.activate_calibration("line", made.calibration.id)
    image = hazelnut_sets["defect"][3:4]
    first = service.inspect("line", image)  # cold: reads what never changes once
    assert (first[0].verdict == "UNCALIBRATED") is not calibrated
    warm = calls_of(store, lambda: service.inspect("line", image))
    print(f"store calls per warm {scoring} inspect (calibrated {calibrated}): {sum(warm.values())} {dict(warm)}")
    # fused: besides the setting record and the bank's count, its positional record and the global kNN search
    assert sum(warm.values()) <= (4 if scoring == "fused" else 2), warm
    assert warm["get_record"] == (2 if scoring == "fused" else 1)  # the setting record: active version, its count, calibration
    if not calibrated:  # an UNCALIBRATED verdict is placed among the nominal scores, which follow new uploads
        before = first[0].nominal_percentile
        service.index("line", hazelnut_sets["defect"][4:8])
        assert service.inspect("line", image)[0].nominal_percentile != before


def test_a_verdict_follows_what_other_processes_change(tmp_path: Path, pool: BackbonePool, hazelnut_sets) -> None:
    """The cache holds only what never changes: a new version, calibration or k elsewhere shows at once."""
    with EdgeStore(tmp_path / "store") as store:
        here, elsewhere = NominalService(store, backbones=pool), NominalService(store, backbones=pool)
        here.index("line", hazelnut_sets["train"][:4])
        image = hazelnut_sets["defect"][:1]
        first = here.inspect("line", image)[0]
        assert first.verdict == "UNCALIBRATED"

        made = elsewhere.calibrate("line", pass_images=hazelnut_sets["good"][:3], fail_images=hazelnut_sets["defect"][1:4])
        assert made.active
        assert here.inspect("line", image)[0].calibration_id == made.calibration.id

        new = elsewhere.versions.begin(elsewhere.get_setting("line"))
        elsewhere.versions.fill(new, hazelnut_sets["train"][4:8])
        elsewhere.versions.activate(new)
        moved = here.inspect("line", image, k=4)[0]
        assert {n.id for n in moved.neighbours} <= {i.id for i in hazelnut_sets["train"][4:8]}

        elsewhere.put_setting("line", k=2)
        assert len(here.inspect("line", image)[0].neighbours) == 2
