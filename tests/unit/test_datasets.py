"""Dataset layouts on real files: the Hazelnut Toy fixture, temporary folders, the ELPV package."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from indexing.datasets import TestImage, _elpv_arrays, elpv_split, find_images, load_dataset
from indexing.errors import NoImages
from indexing.images import decode

HAZELNUT = Path(__file__).resolve().parents[1] / "fixtures" / "hazelnut_toy"


def _png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


# --- MVTec -------------------------------------------------------------------------------


def test_mvtec_hazelnut_toy() -> None:
    dataset = load_dataset(HAZELNUT, "mvtec")
    assert dataset.name == "mvtec:hazelnut_toy"
    assert len(dataset.train) == 28
    assert all("train/good" in Path(image.source).as_posix() for image in dataset.train)
    groups = [item.group for item in dataset.test]
    assert groups.count("good") == 6 and groups.count("colour") == 17 and len(groups) == 23
    for item in dataset.test:
        assert isinstance(item, TestImage)
        assert item.is_fail == (item.group != "good")
        if item.is_fail:
            # The fixture names the mask of colour/07.jpg "ground_truth/colour/07.png".
            assert item.mask_path == HAZELNUT / "ground_truth" / "colour" / f"{Path(item.image.source).stem}.png"
            assert item.mask_path.is_file()
        else:
            assert item.mask_path is None
    train_ids = {image.id for image in dataset.train}
    assert not train_ids & {item.image.id for item in dataset.test}


def test_mvtec_category_as_subset_and_mask_suffix(tmp_path: Path) -> None:
    category = tmp_path / "bottle"
    _png(category / "train" / "good" / "000.png", 0)
    _png(category / "test" / "good" / "000.png", 1)
    _png(category / "test" / "broken" / "000.png", 2)
    _png(category / "ground_truth" / "broken" / "000_mask.png", 3)
    dataset = load_dataset(tmp_path, "mvtec", subset="bottle")
    assert dataset.name == "mvtec:bottle"
    broken = [item for item in dataset.test if item.group == "broken"]
    assert broken[0].mask_path == category / "ground_truth" / "broken" / "000_mask.png"


def test_mvtec_without_train_good_says_which_layout(tmp_path: Path) -> None:
    _png(tmp_path / "test" / "good" / "0.png", 0)
    with pytest.raises(NoImages, match="MVTec AD layout"):
        load_dataset(tmp_path, "mvtec")


# --- folders -----------------------------------------------------------------------------


def test_folders_split_rule(tmp_path: Path) -> None:
    # Nested names whose path order differs from creation order, to exercise the sort.
    relative = sorted(f"{'b' if i % 2 else 'a'}/img_{i:02d}.png" for i in range(25))
    for seed, name in enumerate(reversed(relative)):
        _png(tmp_path / "pass" / name, seed)
    for i in range(4):
        _png(tmp_path / "fail" / f"f{i}.png", 100 + i)

    dataset = load_dataset(tmp_path, "folders")
    expected_test = {name for i, name in enumerate(relative) if i % 10 in (0, 1, 2)}
    rel = lambda image: Path(image.source).relative_to(tmp_path / "pass").as_posix()  # noqa: E731
    test_pass = [item for item in dataset.test if not item.is_fail]
    assert {rel(item.image) for item in test_pass} == expected_test
    assert {rel(image) for image in dataset.train} == set(relative) - expected_test
    assert (len(dataset.train), len(test_pass)) == (16, 9)
    assert [item.group for item in dataset.test].count("fail") == 4
    assert all(item.group == "pass" for item in test_pass)
    assert not {image.id for image in dataset.train} & {item.image.id for item in dataset.test}


def test_folders_layout_errors(tmp_path: Path) -> None:
    _png(tmp_path / "good" / "0.png", 0)
    with pytest.raises(NoImages, match="folders layout"):
        load_dataset(tmp_path, "folders")
    _png(tmp_path / "pass" / "0.png", 0)
    with pytest.raises(NoImages, match="fail"):
        load_dataset(tmp_path, "folders")
    (tmp_path / "fail").mkdir()
    assert load_dataset(tmp_path, "folders").test[0].is_fail is False
    with pytest.raises(ValueError, match="layout"):
        load_dataset(tmp_path, "coco")  # type: ignore[arg-type]


# --- find_images -------------------------------------------------------------------------


def test_find_images_files_folders_globs(tmp_path: Path) -> None:
    a = _png(tmp_path / "a" / "1.png", 0)
    b = _png(tmp_path / "a" / "deep" / "2.PNG", 1)
    c = _png(tmp_path / "c" / "3.png", 2)
    (tmp_path / "a" / "notes.txt").write_text("not an image")
    _png(tmp_path / "a" / "._1.png", 3)  # macOS resource fork
    _png(tmp_path / "a" / ".cache" / "4.png", 4)

    assert find_images([tmp_path / "a"]) == [a, b]
    assert find_images([str(tmp_path / "*" / "*.png")]) == [a, c]
    assert find_images([str(tmp_path / "**" / "*.PNG")]) == [b]
    assert find_images([c, tmp_path / "a", a]) == [c, a, b], "the order named, duplicates once"
    assert find_images([tmp_path / "a" / "notes.txt", c]) == [c]


def test_find_images_none_names_the_paths(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(NoImages, match="empty"):
        find_images([tmp_path / "empty", str(tmp_path / "*.jpg")])
    with pytest.raises(NoImages, match="does not exist"):
        find_images([tmp_path / "missing.png"])


# --- ELPV --------------------------------------------------------------------------------


@pytest.mark.slow  # about 10 s: the package decodes 2,624 cells and ~900 are PNG-encoded
def test_elpv_mono_from_the_package() -> None:
    dataset = load_dataset("elpv", "elpv", subset="mono")
    assert dataset.name == "elpv:mono"
    train_idx = [int(image.source.split(":")[1]) for image in dataset.train]
    test_pass = [item for item in dataset.test if not item.is_fail]
    test_fail = [item for item in dataset.test if item.is_fail]
    test_pass_idx = [int(item.image.source.split(":")[1]) for item in test_pass]
    assert (len(train_idx), len(test_pass), len(test_fail)) == (414, 174, 313)
    assert not set(train_idx) & set(test_pass_idx)
    assert all(i % 10 not in (0, 1, 2) for i in train_idx)
    assert all(i % 10 in (0, 1, 2) for i in test_pass_idx)
    assert all(image.metadata == {"type": "mono", "probability": 0.0} for image in dataset.train)
    assert all(item.group == "mono" and item.image.metadata["probability"] == 1.0 for item in test_fail)
    # Lossless: the decoded cell is the package's array.
    images, _, _ = _elpv_arrays()
    assert np.array_equal(np.asarray(decode(dataset.train[0]))[..., 0], images[train_idx[0]])


def test_elpv_split_counts_and_rule_for_every_subset() -> None:
    _, probabilities, types = _elpv_arrays()
    assert len(probabilities) == 2624
    splits = {subset: elpv_split(probabilities, types, subset) for subset in ("mono", "poly", None)}
    counts = {subset: tuple(len(part) for part in split) for subset, split in splits.items()}
    assert counts == {"mono": (414, 174, 313), "poly": (656, 264, 402), None: (1070, 438, 715)}
    assert elpv_split(probabilities, types, "combined") == splits[None]
    for train, test_pass, test_fail in splits.values():
        assert not set(train) & set(test_pass)
        assert all(probabilities[i] == 0 and i % 10 >= 3 for i in train)
        assert all(probabilities[i] == 0 and i % 10 <= 2 for i in test_pass)
        assert all(probabilities[i] == 1 for i in test_fail)
    # The type subsets are exactly the two halves of the combined split.
    for part in range(3):
        assert sorted(splits["mono"][part] + splits["poly"][part]) == splits[None][part]
    with pytest.raises(ValueError, match="subset"):
        elpv_split(probabilities, types, "thin-film")
