"""The GPU path in one command: CUDA embedding per backbone, faiss-gpu search vs the CPU, a worker on CUDA.

Run on a machine with an NVIDIA GPU (the CUDA image, or `pip install -e '.[gpu]'`,
which must leave faiss-gpu as the only faiss):

    python benchmarks/gpu.py                      # everything; the worker part needs REDIS_URL
    python benchmarks/gpu.py --skip-worker --images 256

It prints, and writes as JSON with `--json FILE`:

1. embedding images/s on CUDA for each backbone (efficientnet_lite0, mobilenet_v2
   with their packaged weights; resnet50 and an OpenCLIP ViT-B-32 from weight files
   this script writes with RANDOM weights, since none can be downloaded offline:
   the speed is the same, the vectors mean nothing), with the largest difference
   from the same images embedded on the CPU for the packaged ones;
2. nearest-patch search of one image's 784 patches against a 200,000 x 256 bank:
   faiss on the GPU (`FaissNN(gpu=True)`, what `default_nn()` picks there) against
   the CPU default (`TorchNN`), answers compared, leave-one-out exclusions included;
3. a real Celery worker (solo pool, NOMINAL_DEVICE=cuda) in this process on the Redis
   at REDIS_URL embedding `nominal.embed_batch` tasks: images/s and the batch size
   it chose, vectors compared with the CPU's.

Without a CUDA device it exits at once with status 2 and says so; nothing is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

NO_GPU = 2
PACKAGED = ("efficientnet_lite0", "mobilenet_v2")
CLIP = "openclip:ViT-B-32:clip-random.pt"


def require_cuda() -> str:
    """The CUDA device's name; exits with status 2 and the reason when there is none."""
    import torch

    if not torch.cuda.is_available():
        print(
            "no CUDA device: torch.cuda.is_available() is False "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda or 'none'}). "
            "Run this on a machine with an NVIDIA GPU and driver; nothing was measured.",
            file=sys.stderr,
        )
        raise SystemExit(NO_GPU)
    return torch.cuda.get_device_name(0)


def photos(n: int) -> list:
    """n real photos (scikit-image's), resized copies cycled, as decoded PIL images."""
    from PIL import Image
    from skimage import data

    base = [data.chelsea(), data.coffee(), data.astronaut(), data.rocket()]
    return [Image.fromarray(base[i % len(base)]).rotate(i % 7) for i in range(n)]


def random_weights(folder: Path) -> None:
    """resnet50.pth and an OpenCLIP ViT-B-32 checkpoint with RANDOM weights (speed only)."""
    import open_clip
    import torch
    from torchvision.models import resnet50

    torch.manual_seed(0)
    torch.save(resnet50(weights=None).state_dict(), folder / "resnet50.pth")
    torch.save(open_clip.create_model("ViT-B-32").state_dict(), folder / "clip-random.pt")


def embedding(images: list, weights: Path, batch_size: int) -> dict:
    import torch

    from indexing.backbones import load_backbone

    out = {}
    for name in (*PACKAGED, "resnet50", CLIP):
        model = load_backbone(name, device="cuda", weights_dir=weights, download=False)
        model.embed(images[:batch_size], batch_size=batch_size)  # warm-up: cuDNN autotuning, allocator
        torch.cuda.synchronize()
        started = time.perf_counter()
        vectors = model.embed(images, batch_size=batch_size)
        torch.cuda.synchronize()
        seconds = time.perf_counter() - started
        row = {"images_per_s": round(len(images) / seconds, 1), "dim": int(vectors.shape[1]),
               "random_weights": name not in PACKAGED}
        if name in PACKAGED:
            cpu = load_backbone(name, device="cpu").embed(images[:16], batch_size=16)
            row["max_abs_diff_vs_cpu"] = float(np.abs(cpu - vectors[:16]).max())
        out[name] = row
        print(f"  {name:<34} {row['images_per_s']:>8.1f} images/s"
              + (f"  (vs CPU: max |diff| {row['max_abs_diff_vs_cpu']:.2e})" if "max_abs_diff_vs_cpu" in row else "  (random weights)"))
        del model
        torch.cuda.empty_cache()
    return out


def search(rows: int, repeat: int) -> dict:
    import faiss

    from indexing.patch_search import FaissNN, TorchNN, default_bounds, default_nn

    if faiss.get_num_gpus() == 0:
        print("  faiss sees no GPU: faiss-cpu is installed (or shadows faiss-gpu); install faiss-gpu-cu12 alone")
        return {"faiss_gpus": 0}
    rng = np.random.default_rng(0)
    bank = rng.standard_normal((rows, 256)).astype(np.float32)
    queries = bank[rng.choice(rows, 784, replace=False)] + 0.01 * rng.standard_normal((784, 256)).astype(np.float32)
    own = list(range(100, 108))
    gpu, cpu = FaissNN(gpu=True), TorchNN()
    gpu.fit(bank)
    cpu.fit(bank)
    timings = {}
    for label, nn in (("faiss_gpu", gpu), ("torch_cpu", cpu)):
        nn.run(queries, 1)
        best = min(_timed(lambda nn=nn: nn.run(queries, 1, exclude=own)) for _ in range(repeat))
        timings[label] = round(best * 1000, 2)
    d_gpu, i_gpu = gpu.run(queries, 1, exclude=own)
    d_cpu, i_cpu = cpu.run(queries, 1, exclude=own)
    out = {
        "faiss_gpus": faiss.get_num_gpus(),
        "bank_rows": rows,
        "ms_per_image": timings,
        "same_rows": float((i_gpu == i_cpu).mean()),
        "max_abs_distance_diff": float(np.abs(d_gpu - d_cpu).max()),
        "excluded_rows_found": int(np.isin(i_gpu, own).sum()),
        "default_nn": type(default_nn()).__name__,
        "default_bounds": type(default_bounds()).__name__,
    }
    print(f"  784 patches vs {rows:,} x 256: faiss GPU {timings['faiss_gpu']} ms, torch CPU {timings['torch_cpu']} ms; "
          f"same nearest row {out['same_rows']:.1%}, default_nn {out['default_nn']}, bounds {out['default_bounds']}")
    return out


def _timed(call) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def worker(images_dir: Path, n: int, weights: Path) -> dict:
    from celery.contrib.testing.worker import start_worker

    from app.config import Config
    from indexing.backbones import load_backbone
    from indexing.reindex import batches_of, batch_from_dict
    from indexing.settings import CollectionVersion
    from indexing.sources import read_source
    from workers import tasks
    from workers.celery_app import EMBED_QUEUE, configure

    url = os.environ.get("REDIS_URL")
    if not url:
        print("  skipped: set REDIS_URL to a Redis the worker can use")
        return {"skipped": "no REDIS_URL"}
    prefix = f"nominal-gpu-bench-{uuid.uuid4().hex[:8]}:"
    config = Config(_env_file=None, NOMINAL_DATA=images_dir / "data", REDIS_URL=url, NOMINAL_REDIS_PREFIX=prefix,
                    NOMINAL_DEVICE="cuda", NOMINAL_WEIGHTS_DIR=weights)
    cpu = load_backbone("efficientnet_lite0", device="cpu")
    version = CollectionVersion(setting="bench", version=1, collection="nominal__bench__efficientnet_lite0__v1",
                                backbone=cpu.name, backbone_identity=cpu.identity, dim=cpu.dim)
    items = read_source(images_dir / "images")[:n]
    app = configure(config)
    tasks._state = None
    with start_worker(app, pool="solo", perform_ping_check=False, shutdown_timeout=60):
        state = tasks.worker_state()
        batch = state.embedder.batch_size
        warm = app.send_task("nominal.embed_batch", args=[version.to_dict(), [i.to_dict() for i in items[:batch]]],
                             queue=EMBED_QUEUE)
        warm.get(timeout=300)
        started = time.perf_counter()
        pending = [app.send_task("nominal.embed_batch", args=[version.to_dict(), [i.to_dict() for i in part]],
                                 queue=EMBED_QUEUE) for part in batches_of(items, batch)]
        results = [batch_from_dict(p.get(timeout=600)) for p in pending]
        seconds = time.perf_counter() - started
    tasks._state = None
    points = [p for r in results for p in r.points]
    from indexing.images import decode

    first = [decode(i.load()) for i in items[:8]]
    diff = float(np.abs(cpu.embed(first) - np.stack([p.vector for p in points[:8]])).max())
    out = {"images_per_s": round(len(points) / seconds, 1), "batch_size": batch,
           "device": str(state.embedder.backbones.get("efficientnet_lite0").device), "max_abs_diff_vs_cpu": diff}
    print(f"  celery worker on {out['device']}: {out['images_per_s']} images/s, batch {batch}, "
          f"vs CPU max |diff| {diff:.2e}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512, help="images per embedding measurement")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--bank-rows", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--skip-worker", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    device = require_cuda()
    print(f"CUDA device: {device}")
    report: dict = {"device": device}
    with tempfile.TemporaryDirectory(prefix="nominal-gpu-") as tmp:
        folder = Path(tmp)
        (folder / "weights").mkdir()
        random_weights(folder / "weights")
        images = photos(args.images)
        print("1. embedding on CUDA")
        report["embedding"] = embedding(images, folder / "weights", args.batch_size)
        print("2. nearest-patch search")
        report["search"] = search(args.bank_rows, args.repeat)
        print("3. worker on CUDA")
        if args.skip_worker:
            report["worker"] = {"skipped": "--skip-worker"}
        else:
            (folder / "images").mkdir()
            for i, image in enumerate(images[:256]):
                image.save(folder / "images" / f"{i:04d}.png")
            report["worker"] = worker(folder, 256, folder / "weights")
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
