"""Setting names become parts of collection names, so only safe names are accepted."""

from __future__ import annotations

import pytest

from indexing.errors import InvalidName
from indexing.settings import MachineSetting, alias_name, collection_name, default_scoring


@pytest.mark.parametrize("name", ["line-3", "Press_7", "a", "x" * 64])
def test_valid_names(name: str) -> None:
    assert MachineSetting(name=name, backbone="efficientnet_lite0", k=1).name == name


@pytest.mark.parametrize("name", ["", "-lead", "has space", "a/b", "dots.are.out", "a__b", "x" * 65, "ümlaut"])
def test_invalid_names_are_refused_with_the_rule(name: str) -> None:
    with pytest.raises(InvalidName, match="letters, digits"):
        MachineSetting(name=name, backbone="efficientnet_lite0", k=1)


def test_collection_names_keep_setting_backbone_and_version_apart() -> None:
    assert collection_name("line-3", "openclip:ViT-B-32:laion2b", 2) == "nominal__line-3__openclip-ViT-B-32-laion2b__v2"
    assert alias_name("line-3") != collection_name("line-3", "efficientnet_lite0", 1)
    assert collection_name("a", "b", 1, kind="patch") != collection_name("a", "b", 1)


def test_round_trip_ignores_unknown_fields() -> None:
    setting = MachineSetting(name="s", backbone="b", k=3, description="press 7")
    assert MachineSetting.from_dict({**setting.to_dict(), "future_field": 1}) == setting


def test_a_record_written_before_scoring_was_chosen_reads_as_global() -> None:
    # New settings get `default_scoring` (fused on a CNN); an old record's meaning never changes under it.
    assert MachineSetting.from_dict({"name": "s", "backbone": "b", "k": 1}).scoring == "global"
    assert default_scoring((40, 112)) == "fused" and default_scoring(None) == "global"


def test_bad_k_and_scoring_are_refused() -> None:
    with pytest.raises(ValueError, match="k must be"):
        MachineSetting(name="s", backbone="b", k=0)
    with pytest.raises(ValueError, match="scoring"):
        MachineSetting(name="s", backbone="b", k=1, scoring="pixels")  # type: ignore[arg-type]
