"""The GPU branches: they run where a CUDA device is present and skip, saying why, elsewhere.

`FaissNN` on the GPU (no selectors there: exclusions by over-fetching), `default_nn` /
`default_bounds` choosing faiss and no bounds when faiss sees a GPU, backbones on CUDA
giving the CPU's vectors, and a Celery worker choosing CUDA and its larger batches. The
figures (images/s, search time) come from `python benchmarks/gpu.py`; here the branches
are checked for the right answers. Without a GPU only the benchmark's own refusal runs.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

REPO = Path(__file__).resolve().parents[2]

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (torch.cuda.is_available() is False)")


def faiss_gpus() -> int:
    try:
        import faiss
    except ImportError:
        return 0
    return faiss.get_num_gpus()


faiss_gpu = pytest.mark.skipif(
    faiss_gpus() == 0, reason="faiss sees no GPU (no device, or faiss-cpu installed instead of faiss-gpu-cu12)"
)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: the benchmark runs for real")
def test_the_gpu_benchmark_refuses_clearly_without_a_gpu() -> None:
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "gpu.py")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert "no CUDA device" in done.stderr and "nothing was measured" in done.stderr


@faiss_gpu
@pytest.mark.parametrize("exclude", [None, list(range(40, 60))])
def test_faiss_on_the_gpu_answers_like_the_reference(exclude) -> None:
    from indexing.patch_search import FaissNN, NumpyNN

    rng = np.random.default_rng(5)
    bank = rng.standard_normal((5000, 64)).astype(np.float32)
    queries = np.concatenate([bank[45:50], rng.standard_normal((20, 64)).astype(np.float32)])
    gpu, reference = FaissNN(gpu=True), NumpyNN()
    gpu.fit(bank[:3000])
    gpu.add(bank[3000:])
    reference.fit(bank)
    got_d, got_i = gpu.run(queries, 3, exclude=exclude)
    want_d, want_i = reference.run(queries, 3, exclude=exclude)
    np.testing.assert_allclose(got_d, want_d, atol=1e-3)
    assert (got_i == want_i).mean() > 0.99
    if exclude:
        assert not np.isin(got_i, exclude).any()
    np.testing.assert_allclose(gpu.reconstruct(3001), bank[3001])


@faiss_gpu
def test_with_a_gpu_the_bank_searches_with_faiss_and_keeps_no_bounds() -> None:
    from indexing.patch_search import FaissNN, default_bounds, default_nn

    assert isinstance(default_nn(), FaissNN) and default_bounds() is None


@cuda
@pytest.mark.parametrize("name", ["efficientnet_lite0", "mobilenet_v2"])
def test_a_backbone_on_cuda_gives_the_cpus_vectors(name: str) -> None:
    from PIL import Image
    from skimage import data

    from indexing.backbones import load_backbone

    images = [Image.fromarray(data.chelsea()), Image.fromarray(data.rocket())]
    on_gpu = load_backbone(name, device="cuda")
    assert on_gpu.device.type == "cuda" and load_backbone(name).device.type == "cuda"  # None picks CUDA
    gpu_vectors = on_gpu.embed(images)
    cpu_vectors = load_backbone(name, device="cpu").embed(images)
    assert np.abs(gpu_vectors - cpu_vectors).max() < 1e-3
    maps = on_gpu.feature_maps(images)
    assert maps.stride8.device.type == "cpu"  # handed back on the CPU, where the bank lives


@cuda
def test_a_worker_on_cuda_embeds_with_large_batches(tmp_path: Path, redis_space, hazelnut: Path) -> None:
    from celery.contrib.testing.worker import start_worker

    from app.config import Config
    from indexing.backbones import load_backbone
    from indexing.reindex import batch_from_dict
    from indexing.settings import CollectionVersion
    from indexing.sources import read_source
    from workers import tasks
    from workers.celery_app import EMBED_QUEUE, configure

    config = Config(_env_file=None, NOMINAL_DATA=tmp_path / "data", REDIS_URL=redis_space.url,
                    NOMINAL_REDIS_PREFIX=redis_space.prefix, NOMINAL_DEVICE="cuda")
    cpu = load_backbone("efficientnet_lite0", device="cpu")
    version = CollectionVersion(setting="hz", version=1, collection="nominal__hz__efficientnet_lite0__v1",
                                backbone=cpu.name, backbone_identity=cpu.identity, dim=cpu.dim)
    items = read_source(hazelnut / "train" / "good")[:8]
    app = configure(config)
    tasks._state = None
    try:
        with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=60):
            result = app.send_task("nominal.embed_batch", args=[version.to_dict(), [i.to_dict() for i in items]],
                                   queue=EMBED_QUEUE).get(timeout=300)
            state = tasks.worker_state()
            assert state.embedder.batch_size >= tasks.CUDA_BATCH_SIZE
            assert state.embedder.backbones.get("efficientnet_lite0").device.type == "cuda"
    finally:
        tasks._state = None
    batch = batch_from_dict(result)
    expected = cpu.embed([__import__("indexing.images", fromlist=["decode"]).decode(i.load()) for i in items])
    assert np.abs(np.stack([p.vector for p in batch.points]) - expected).max() < 1e-3
