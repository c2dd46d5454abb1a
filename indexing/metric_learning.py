"""Learning from labelled defects: a metric projection of the embeddings, trained with an outlier class, and its gate.

After weeks on a line a setting holds labelled FAIL images. One-class kNN ignores
them; this module learns a linear projection of the frozen backbone embeddings in
which a defect lies farther from its nearest nominal image than a nominal image
does from its own nearest neighbour (a triplet loss with an "outlier" class made
of the labelled defects and synthetic ones: CutPaste pastes on PASS images). The
kNN then scores in the projected space. After metric learning with an outlier class
(triplet/quadruplet losses on nominal groups plus an outlier class).

A trained scorer is used only where it measurably helps: `gate` compares it with the
unsupervised kNN by cross-validation on the labelled images alone (out-of-fold
scores of the labelled FAIL images and of the PASS images, each PASS image scored
against the other folds' PASS images), and accepts it only when its average
precision beats the unsupervised one by `margin` and the gain stays above zero at
the 5th percentile of a paired bootstrap (a few lucky images are not a gain).

`labelled_fail_split` is the fixed protocol that makes figures comparable:
FAIL test images j (0-based, in the dataset's order) with j % 10 in {3, 4} become
labelled training defects and leave the test set.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from indexing.datasets import TestImage

# j % 10 in LABELLED_RESIDUES: a FAIL test image the protocol hands to training.
LABELLED_RESIDUES = (3, 4)
# A trained scorer goes live only when its cross-validated AP beats the unsupervised one by this much.
DEFAULT_MARGIN = 0.01
# Paired bootstrap resamples of the out-of-fold scores behind the gate's lower bound.
BOOTSTRAP = 300


def labelled_fail_split(test: Sequence[TestImage]) -> tuple[list[TestImage], list[TestImage]]:
    """(labelled FAIL images for training, the test set without them), in the dataset's order.

    FAIL image j counts FAIL images only, from 0, in the order `test` lists them.
    """
    labelled, remaining, j = [], [], 0
    for item in test:
        if item.is_fail:
            (labelled if j % 10 in LABELLED_RESIDUES else remaining).append(item)
            j += 1
        else:
            remaining.append(item)
    return labelled, remaining


def cut_paste(images: Sequence[Image.Image], *, seed: int = 0) -> list[Image.Image]:
    """One synthetic defect per image: a rotated rectangle of the image pasted elsewhere on it (CutPaste)."""
    return cut_paste_boxes(images, seed=seed)[0]


def cut_paste_boxes(
    images: Sequence[Image.Image], *, seed: int = 0
) -> tuple[list[Image.Image], list[tuple[int, int, int, int]]]:
    """`cut_paste`, with where each piece was pasted: (x, y, width, height) in the image's pixels."""
    rng = np.random.default_rng(seed)
    out, boxes = [], []
    for original in images:
        image = original.convert("RGB").copy()
        width, height = image.size
        pw = int(rng.integers(max(2, width // 10), max(3, width // 4)))
        ph = int(rng.integers(max(2, height // 10), max(3, height // 4)))
        x, y = int(rng.integers(0, width - pw)), int(rng.integers(0, height - ph))
        piece = image.crop((x, y, x + pw, y + ph)).rotate(float(rng.integers(0, 360)))
        at = (int(rng.integers(0, width - pw)), int(rng.integers(0, height - ph)))
        image.paste(piece, at)
        out.append(image)
        boxes.append((at[0], at[1], pw, ph))
    return out, boxes


def knn_distances(bank: np.ndarray, queries: np.ndarray, k: int, *, exclude_self: bool = False) -> np.ndarray:
    """Mean cosine distance of each (unit) query to its k nearest rows of `bank`; `exclude_self`: queries are bank rows."""
    similarity = queries @ bank.T
    if exclude_self:
        np.fill_diagonal(similarity, -np.inf)
    k = min(k, bank.shape[0] - (1 if exclude_self else 0))
    nearest = -np.sort(-similarity, axis=1)[:, :k]
    return (1.0 - nearest).mean(axis=1)


@dataclass
class MetricHead:
    """A linear projection of unit embeddings (dim -> out_dim), rows re-normalised after it."""

    weight: np.ndarray  # (out_dim, dim) float32

    @classmethod
    def fit(
        cls,
        nominal: np.ndarray,
        outliers: np.ndarray,
        *,
        out_dim: int = 128,
        steps: int = 300,
        batch: int = 256,
        margin: float = 0.5,
        seed: int = 0,
    ) -> MetricHead:
        """Train on nominal embeddings (PASS) and outlier embeddings (labelled and synthetic defects).

        Each step: a batch of PASS anchors, their nearest other PASS image in the projected space
        as positive, and a batch of outliers whose similarity to their nearest PASS image must
        stay `margin` below the anchors' (a hinge on the triplet of distances).
        """
        import torch

        threads = torch.get_num_threads()
        # Small matrices: one thread is several times faster than two here, and far faster on a loaded machine.
        torch.set_num_threads(1)
        try:
            return cls._fit(nominal, outliers, out_dim=out_dim, steps=steps, batch=batch, margin=margin, seed=seed)
        finally:
            torch.set_num_threads(threads)

    @classmethod
    def _fit(
        cls, nominal: np.ndarray, outliers: np.ndarray, *, out_dim: int, steps: int, batch: int, margin: float, seed: int
    ) -> MetricHead:
        import torch

        generator = torch.Generator().manual_seed(seed)
        torch_state = torch.random.get_rng_state()
        torch.manual_seed(seed)
        layer = torch.nn.Linear(nominal.shape[1], out_dim, bias=False)
        torch.random.set_rng_state(torch_state)
        optimiser = torch.optim.Adam(layer.parameters(), lr=1e-3, weight_decay=1e-4)
        good = torch.from_numpy(np.ascontiguousarray(nominal, dtype=np.float32))
        bad = torch.from_numpy(np.ascontiguousarray(outliers, dtype=np.float32))
        reference = good if len(good) <= 4096 else good[torch.randperm(len(good), generator=generator)[:4096]]
        normalise = torch.nn.functional.normalize
        for _ in range(steps):
            anchors = reference[torch.randint(len(reference), (batch,), generator=generator)]
            projected = normalise(layer(reference), dim=1)
            positive = (normalise(layer(anchors), dim=1) @ projected.T).topk(2, dim=1).values[:, 1]
            negatives = normalise(layer(bad[torch.randint(len(bad), (batch,), generator=generator)]), dim=1)
            negative = (negatives @ projected.T).max(dim=1).values
            loss = torch.relu(negative - positive + margin).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
        return cls(weight=layer.weight.detach().numpy().astype(np.float32))

    def project(self, vectors: np.ndarray) -> np.ndarray:
        out = np.asarray(vectors, dtype=np.float32) @ self.weight.T
        return out / np.maximum(np.linalg.norm(out, axis=1, keepdims=True), 1e-12)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.save(buffer, self.weight, allow_pickle=False)
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> MetricHead:
        return cls(weight=np.load(io.BytesIO(data), allow_pickle=False))


@dataclass(frozen=True)
class Gate:
    """The cross-validated comparison that decides whether a trained scorer answers."""

    unsupervised_ap: float
    trained_ap: float
    # 5th percentile of (trained AP - unsupervised AP) over paired bootstrap resamples of the labelled images.
    gain_low: float
    margin: float
    folds: int
    n_pass: int
    n_fail: int
    # The trained scorer's out-of-fold scores of the PASS and the labelled FAIL images (heads that never saw
    # them, banks without them): what an honest threshold for the trained scorer is calibrated on.
    oof_pass: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)
    oof_fail: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)

    @property
    def active(self) -> bool:
        """The gain reaches the margin, and is above zero in 95% of resamples (not noise of a few images)."""
        return self.trained_ap >= self.unsupervised_ap + self.margin and self.gain_low > 0.0

    @property
    def reason(self) -> str:
        verdict = "beats" if self.active else "does not measurably beat"
        return (
            f"cross-validated AP on {self.n_fail} labelled FAIL and {self.n_pass} PASS images ({self.folds} folds): "
            f"trained {self.trained_ap:.3f} {verdict} unsupervised {self.unsupervised_ap:.3f} "
            f"(margin {self.margin}; gain at the 5th bootstrap percentile {self.gain_low:+.3f})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "unsupervised_ap": self.unsupervised_ap, "trained_ap": self.trained_ap, "gain_low": self.gain_low,
            "margin": self.margin,
            "folds": self.folds, "n_pass": self.n_pass, "n_fail": self.n_fail, "active": self.active,
            "reason": self.reason,
        }


def gate(
    nominal: np.ndarray,
    fails: np.ndarray,
    synthetic: np.ndarray,
    *,
    k: int = 1,
    folds: int = 5,
    margin: float = DEFAULT_MARGIN,
    steps: int = 300,
    seed: int = 0,
) -> Gate:
    """Out-of-fold AP of the trained and the unsupervised kNN, on the labelled images only.

    PASS and labelled FAIL images are each split into `folds`; for each fold a head is
    trained on the other folds (and on all synthetic defects, which are never scored),
    and the fold's PASS and FAIL images are scored against the other folds' PASS images.
    """
    if len(fails) < 2:
        raise ValueError(f"{len(fails)} labelled FAIL image(s): the gate needs at least 2 to cross-validate")
    folds = min(folds, len(fails))  # every fold holds at least one labelled FAIL image
    rng = np.random.default_rng(seed)
    pass_fold = rng.permutation(len(nominal)) % folds
    fail_fold = rng.permutation(len(fails)) % folds
    truth, raw, trained = [], [], []
    for fold in range(folds):
        bank = nominal[pass_fold != fold]
        queries = np.concatenate([nominal[pass_fold == fold], fails[fail_fold == fold]])
        truth += [0] * int((pass_fold == fold).sum()) + [1] * int((fail_fold == fold).sum())
        raw.append(knn_distances(bank, queries, k))
        head = MetricHead.fit(bank, np.concatenate([fails[fail_fold != fold], synthetic]), steps=steps, seed=seed + fold)
        trained.append(knn_distances(head.project(bank), head.project(queries), k))
    return _decided(np.asarray(truth), np.concatenate(raw), np.concatenate(trained), rng, margin=margin, folds=folds)


def _decided(labels: np.ndarray, before: np.ndarray, after: np.ndarray, rng: np.random.Generator, *, margin: float,
             folds: int) -> Gate:
    """The gate of out-of-fold scores before (unsupervised) and after (trained), with its paired bootstrap bound."""
    from sklearn.metrics import average_precision_score

    gains = []
    for _ in range(BOOTSTRAP):
        pick = rng.integers(0, len(labels), len(labels))
        if 0 < labels[pick].sum() < len(pick):
            gains.append(average_precision_score(labels[pick], after[pick]) - average_precision_score(labels[pick], before[pick]))
    return Gate(
        unsupervised_ap=float(average_precision_score(labels, before)),
        trained_ap=float(average_precision_score(labels, after)),
        gain_low=float(np.percentile(gains, 5)) if gains else 0.0,
        margin=margin, folds=folds, n_pass=int((labels == 0).sum()), n_fail=int((labels == 1).sum()),
        oof_pass=after[labels == 0], oof_fail=after[labels == 1],
    )


# ------------------------------------------------------------------ dense hybrid (patch settings)

# A labelled FAIL image has no mask: its patches farthest from the nominal bank, this share of them, are its defect.
FAIL_PATCH_SHARE = 0.02
# Patches the discriminative head is fitted on, at most, per class.
HYBRID_MAX_PATCHES = 20000


@dataclass
class HybridHead:
    """DenseHybrid for patch scoring: a patch's distance to the nominal bank (generative) plus a logistic
    head's log-odds that it is a defect (discriminative), each standardised over nominal patches.

    The distance catches what looks unusual; the head catches what looks like the known defects,
    even where it lies close to some nominal patch.
    """

    coef: np.ndarray  # (dim,) float32
    intercept: float
    d_mean: float
    d_std: float
    l_mean: float
    l_std: float

    @classmethod
    def fit(
        cls, negatives: np.ndarray, negative_distances: np.ndarray, positives: np.ndarray, *, seed: int = 0
    ) -> HybridHead:
        """Fit on nominal patches (and their distances to the bank) and defect patches (labelled and synthetic)."""
        from sklearn.linear_model import LogisticRegression

        rng = np.random.default_rng(seed)
        negatives, negative_distances = _capped(rng, negatives, negative_distances)
        positives, _ = _capped(rng, positives, None)
        features = np.concatenate([negatives, positives]).astype(np.float32)
        labels = np.concatenate([np.zeros(len(negatives)), np.ones(len(positives))])
        model = LogisticRegression(C=0.1, class_weight="balanced", max_iter=300).fit(features, labels)
        coef, intercept = model.coef_[0].astype(np.float32), float(model.intercept_[0])
        logits = negatives @ coef + intercept
        return cls(coef=coef, intercept=intercept, d_mean=float(negative_distances.mean()),
                   d_std=float(max(negative_distances.std(), 1e-6)), l_mean=float(logits.mean()),
                   l_std=float(max(logits.std(), 1e-6)))

    def combine(self, distances: np.ndarray, patches: np.ndarray) -> np.ndarray:
        """The hybrid score of each patch."""
        logits = np.asarray(patches, dtype=np.float32) @ self.coef + self.intercept
        return ((np.asarray(distances) - self.d_mean) / self.d_std + (logits - self.l_mean) / self.l_std).astype(np.float32)

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, coef=self.coef, stats=np.asarray(
            [self.intercept, self.d_mean, self.d_std, self.l_mean, self.l_std], dtype=np.float64))
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> HybridHead:
        with np.load(io.BytesIO(data), allow_pickle=False) as found:
            intercept, d_mean, d_std, l_mean, l_std = (float(x) for x in found["stats"])
            return cls(coef=found["coef"], intercept=intercept, d_mean=d_mean, d_std=d_std, l_mean=l_mean, l_std=l_std)


def _capped(rng: np.random.Generator, rows: np.ndarray, values: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if len(rows) <= HYBRID_MAX_PATCHES:
        return rows, values if values is not None else np.empty(0)
    pick = rng.choice(len(rows), HYBRID_MAX_PATCHES, replace=False)
    return rows[pick], values[pick] if values is not None else np.empty(0)


@dataclass(frozen=True)
class ScoredPatches:
    """One image's patch vectors, their distances to the nominal bank, and its unsupervised image score."""

    vectors: np.ndarray  # (P, dim)
    distances: np.ndarray  # (P,)
    score: float
    # The image is in the nominal set: its distances are leave-one-out ones, which run higher than a new
    # image's (the coreset was chosen with its patches), so it cannot stand for a new PASS part in a gate.
    in_bank: bool = False
    tiled: bool = False  # scored by tiles: its patches are every tile's, not one square grid

    def worst(self) -> np.ndarray:
        """Its patches farthest from the bank: a labelled FAIL image's presumed defect."""
        k = max(1, int(round(FAIL_PATCH_SHARE * len(self.distances))))
        return self.vectors[np.argpartition(-self.distances, k - 1)[:k]]


def fit_hybrid(passed: Sequence[ScoredPatches], fails: Sequence[ScoredPatches], synthetic: np.ndarray,
               *, seed: int = 0) -> HybridHead:
    """A hybrid head from PASS images' patches, labelled FAIL images' worst patches, and synthetic defect patches."""
    return HybridHead.fit(
        np.concatenate([p.vectors for p in passed]), np.concatenate([p.distances for p in passed]),
        np.concatenate([*(f.worst() for f in fails), synthetic]), seed=seed,
    )


def hybrid_gate(
    passed: Sequence[ScoredPatches],
    fails: Sequence[ScoredPatches],
    synthetic: np.ndarray,
    *,
    folds: int = 5,
    margin: float = DEFAULT_MARGIN,
    seed: int = 0,
) -> Gate:
    """Out-of-fold AP of the hybrid and the unsupervised patch scores, on the labelled images only.

    For each fold a head is fitted on the other folds' PASS patches and FAIL images' worst
    patches (and all synthetic defect patches, which are never scored); the fold's images
    are scored by their largest hybrid patch score. Distances come from the full bank,
    each PASS image's own patches left out.
    """
    if len(fails) < 2:
        raise ValueError(f"{len(fails)} labelled FAIL image(s): the gate needs at least 2 to cross-validate")
    folds = min(folds, len(fails))
    rng = np.random.default_rng(seed)
    pass_fold = rng.permutation(len(passed)) % folds
    fail_fold = rng.permutation(len(fails)) % folds
    truth: list[int] = []
    before: list[float] = []
    after: list[float] = []
    for fold in range(folds):
        head = fit_hybrid([p for p, f in zip(passed, pass_fold) if f != fold],
                          [x for x, f in zip(fails, fail_fold) if f != fold], synthetic, seed=seed + fold)
        for items, assigned, label in ((passed, pass_fold, 0), (fails, fail_fold, 1)):
            for item, f in zip(items, assigned):
                if f == fold:
                    truth.append(label)
                    before.append(item.score)
                    after.append(float(head.combine(item.distances, item.vectors).max()))
    return _decided(np.asarray(truth), np.asarray(before), np.asarray(after), rng, margin=margin, folds=folds)
