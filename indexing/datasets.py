"""Labelled image sets on disk (or in a package), as PASS training images and test images.

Three layouts:

- ``mvtec``: the MVTec AD category layout. ``train/good`` is training; in ``test/``,
  ``good`` is PASS and every other folder is a FAIL defect type, with optional pixel
  masks in ``ground_truth/<defect>/``.
- ``folders``: ``pass/`` and ``fail/`` under one folder. A fixed, content-independent
  rule holds out 30% of the PASS images for testing, so that no PASS test image is
  also in training.
- ``elpv``: the ELPV solar-cell set from the ``elpv-dataset`` package, split by the
  same rule on the cell index so figures compare with those measured elsewhere.

The split rules are part of the benchmark definition: change them and every
published figure stops being comparable.
"""

from __future__ import annotations

import functools
import glob
import os
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from indexing.errors import NoImages
from indexing.images import IMAGE_SUFFIXES, ImageInput

Layout = Literal["mvtec", "folders", "elpv"]
LAYOUTS: tuple[str, ...] = ("mvtec", "folders", "elpv")
ELPV_SUBSETS: tuple[str, ...] = ("mono", "poly", "combined")
# PASS item i is a test item when i % 10 is one of these: 30% held out, spread evenly.
TEST_RESIDUES = frozenset({0, 1, 2})

_MVTEC_EXPECTED = (
    "expected the MVTec AD layout: <category>/train/good/*.png for training, "
    "<category>/test/good/ (PASS) and <category>/test/<defect>/ (FAIL), "
    "optional <category>/ground_truth/<defect>/<name>_mask.png"
)
_FOLDERS_EXPECTED = "expected the folders layout: <folder>/pass/ (PASS images) and <folder>/fail/ (FAIL images)"


@dataclass(frozen=True)
class TestImage:
    """One labelled test image.

    Attributes:
        image: the image.
        is_fail: True for a FAIL (defective) image.
        group: defect type for MVTec ("good", "colour"...), "pass"/"fail" for
            folders, cell type "mono"/"poly" for ELPV.
        mask_path: pixel mask of the defect, where the layout has one.
    """

    # Not a test case, whatever its name says to pytest.
    __test__ = False

    image: ImageInput
    is_fail: bool
    group: str
    mask_path: Path | None = None


@dataclass(frozen=True)
class Dataset:
    """PASS images to index (`train`) and labelled images to evaluate on (`test`)."""

    name: str
    train: list[ImageInput]
    test: list[TestImage]


def load_dataset(source: str | Path, layout: Layout, *, subset: str | None = None) -> Dataset:
    """Load a labelled dataset.

    Args:
        source: the category folder for ``mvtec`` (the one holding train/ and test/),
            the folder holding pass/ and fail/ for ``folders``; ignored for ``elpv``
            (pass "elpv").
        layout: ``mvtec``, ``folders`` or ``elpv``.
        subset: for ``mvtec``, a category folder under `source` (so `source` may be the
            MVTec root); for ``elpv``, "mono", "poly" or "combined"/None; not used by
            ``folders``.

    Returns:
        The `Dataset`, in a deterministic order.

    Raises:
        NoImages: the expected folders are missing or hold no images; the message
            describes the layout that was expected.
        ValueError: an unknown layout or subset.
    """
    if layout == "mvtec":
        root = Path(source) / subset if subset else Path(source)
        return _load_mvtec(root)
    if layout == "folders":
        if subset is not None:
            raise ValueError(f"the folders layout has no subsets (got subset={subset!r}): pass the folder itself")
        return _load_folders(Path(source))
    if layout == "elpv":
        return _load_elpv(subset)
    raise ValueError(f"unknown dataset layout {layout!r}: use one of {', '.join(LAYOUTS)}")


def find_images(paths: Sequence[str | Path]) -> list[Path]:
    """Image files named by files, folders (searched recursively) and glob patterns.

    Only files whose suffix (any case) is in `IMAGE_SUFFIXES` are kept. Inside a
    folder, hidden files and folders (".", e.g. macOS "._x.jpg" resource forks) are
    skipped; a file named explicitly is kept.

    Args:
        paths: files, folders or globs (``**`` recurses).

    Returns:
        The image paths in the order they were named (each folder's and glob's
        matches sorted), without duplicates: verdicts come back in the order a
        user listed the files.

    Raises:
        NoImages: nothing matched; the message names the paths.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    found: dict[Path, Path] = {}
    for entry in paths:
        for path in _expand(Path(entry)):
            # Key on the resolved path so "a/x.png" and "./a/x.png" count once.
            found.setdefault(path.resolve(), path)
    if not found:
        suffixes = ", ".join(sorted(IMAGE_SUFFIXES))
        raise NoImages(
            f"no image files ({suffixes}) in {', '.join(str(p) for p in paths) or 'an empty list'}: "
            "pass image files, folders that contain them, or glob patterns"
        )
    return list(found.values())


def is_test_index(index: int) -> bool:
    """The split rule for PASS items of the folders and ELPV layouts: True = test."""
    return index % 10 in TEST_RESIDUES


# --- file discovery ------------------------------------------------------------------


def _expand(entry: Path) -> Iterable[Path]:
    if entry.is_file():
        return [entry] if _is_image(entry) else []
    if entry.is_dir():
        return _walk(entry)
    if glob.escape(str(entry)) == str(entry):
        # Not a pattern, so a path that does not exist is a typo, not an empty match.
        raise NoImages(f"{entry} does not exist: pass image files, folders that contain them, or glob patterns")
    matches = sorted(Path(match) for match in glob.glob(str(entry), recursive=True))
    return [path for match in matches for path in _expand(match)]


def _walk(root: Path) -> list[Path]:
    images = []
    for folder, subfolders, files in os.walk(root):
        subfolders[:] = [name for name in subfolders if not name.startswith(".")]
        images += [Path(folder) / name for name in files if not name.startswith(".") and _is_image(Path(name))]
    return sorted(images)


def _is_image(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _images_under(folder: Path, expected: str) -> list[Path]:
    if not folder.is_dir():
        raise NoImages(f"{folder} is not a folder: {expected}")
    try:
        return find_images([folder])
    except NoImages:
        raise NoImages(f"no images in {folder}: {expected}") from None


# --- MVTec ---------------------------------------------------------------------------


def _load_mvtec(root: Path) -> Dataset:
    train = [ImageInput.from_path(path) for path in _images_under(root / "train" / "good", _MVTEC_EXPECTED)]
    test_root = root / "test"
    if not test_root.is_dir():
        raise NoImages(f"{test_root} is not a folder: {_MVTEC_EXPECTED}")
    test: list[TestImage] = []
    for group_dir in sorted(path for path in test_root.iterdir() if path.is_dir() and not path.name.startswith(".")):
        group = group_dir.name
        is_fail = group != "good"
        for path in sorted(_walk(group_dir)):
            mask = _mvtec_mask(root, group, path) if is_fail else None
            test.append(TestImage(ImageInput.from_path(path), is_fail=is_fail, group=group, mask_path=mask))
    if not test:
        raise NoImages(f"no test images under {test_root}: {_MVTEC_EXPECTED}")
    return Dataset(name=f"mvtec:{root.name}", train=train, test=test)


def _mvtec_mask(root: Path, group: str, image: Path) -> Path | None:
    relative = image.relative_to(root / "test" / group)
    folder = root / "ground_truth" / group / relative.parent
    # MVTec AD names masks "<name>_mask.png"; some re-packagings (Hazelnut Toy) keep "<name>.png".
    for candidate in (folder / f"{image.stem}_mask.png", folder / f"{image.stem}.png"):
        if candidate.is_file():
            return candidate
    return None


# --- folders -------------------------------------------------------------------------


def _load_folders(root: Path) -> Dataset:
    pass_dir, fail_dir = root / "pass", root / "fail"
    passes = _images_under(pass_dir, _FOLDERS_EXPECTED)
    if not fail_dir.is_dir():
        raise NoImages(f"{fail_dir} is not a folder: {_FOLDERS_EXPECTED} (fail/ may be empty)")
    # Sort by the relative path as text so the split does not depend on where the folder lives.
    passes.sort(key=lambda path: path.relative_to(pass_dir).as_posix())
    fails = sorted(_walk(fail_dir), key=lambda path: path.relative_to(fail_dir).as_posix())
    train: list[ImageInput] = []
    test: list[TestImage] = []
    for index, path in enumerate(passes):
        image = ImageInput.from_path(path)
        if is_test_index(index):
            test.append(TestImage(image, is_fail=False, group="pass"))
        else:
            train.append(image)
    test += [TestImage(ImageInput.from_path(path), is_fail=True, group="fail") for path in fails]
    return Dataset(name=f"folders:{root.name}", train=train, test=test)


# --- ELPV ----------------------------------------------------------------------------


def elpv_split(
    probabilities: np.ndarray, types: np.ndarray, subset: str | None = None
) -> tuple[list[int], list[int], list[int]]:
    """The ELPV split as cell indices: (train PASS, test PASS, test FAIL).

    Cells with defect probability 0 are PASS and 1 are FAIL; 1/3 and 2/3 are left
    out as uncertain. A PASS cell is a test cell when its index among *all* cells
    (whatever the subset) satisfies `is_test_index`, so the mono and poly splits are
    exactly the two halves of the combined one.

    Args:
        probabilities: defect probability per cell, as `elpv_dataset` returns them.
        types: "mono" or "poly" per cell.
        subset: "mono", "poly", or "combined"/None for both.

    Raises:
        ValueError: an unknown subset.
    """
    wanted = _elpv_subset(subset)
    train, test_pass, test_fail = [], [], []
    for index, (probability, cell_type) in enumerate(zip(probabilities, types)):
        if wanted is not None and str(cell_type) != wanted:
            continue
        if np.isclose(probability, 0.0):
            (test_pass if is_test_index(index) else train).append(index)
        elif np.isclose(probability, 1.0):
            test_fail.append(index)
    return train, test_pass, test_fail


def _elpv_subset(subset: str | None) -> str | None:
    if subset is None or subset == "combined":
        return None
    if subset in ("mono", "poly"):
        return subset
    raise ValueError(f"unknown ELPV subset {subset!r}: use one of {', '.join(ELPV_SUBSETS)}")


@functools.lru_cache(maxsize=1)
def _elpv_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All 2,624 cells, (images (n, 300, 300) uint8, probabilities (n,), types (n,)), loaded once."""
    from elpv_dataset.utils import load_dataset as load_elpv

    images, probabilities, types = load_elpv()
    return images, probabilities, types


@functools.lru_cache(maxsize=None)
def _elpv_cell(index: int) -> ImageInput:
    # PNG-encoding a cell costs ~12 ms; cached so loading mono, poly and combined in
    # one benchmark encodes each cell once.
    images, probabilities, types = _elpv_arrays()
    return ImageInput.from_array(
        images[index],
        source=f"elpv:{index}",
        metadata={"type": str(types[index]), "probability": float(probabilities[index])},
    )


def _elpv_cells(indices: list[int]) -> list[ImageInput]:
    # zlib releases the GIL, so two threads nearly halve the encoding time.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        return list(pool.map(_elpv_cell, indices))


def _load_elpv(subset: str | None) -> Dataset:
    name = _elpv_subset(subset) or "combined"
    _, probabilities, types = _elpv_arrays()
    train_idx, test_pass_idx, test_fail_idx = elpv_split(probabilities, types, subset)
    train = _elpv_cells(train_idx)
    test_pass = _elpv_cells(test_pass_idx)
    test_fail = _elpv_cells(test_fail_idx)
    test = [TestImage(image, is_fail=False, group=str(image.metadata["type"])) for image in test_pass]
    test += [TestImage(image, is_fail=True, group=str(image.metadata["type"])) for image in test_fail]
    return Dataset(name=f"elpv:{name}", train=train, test=test)
