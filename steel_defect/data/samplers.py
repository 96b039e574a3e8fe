"""Training samplers and the class statistics they use: every epoch's order and augmentation seeds a pure
function of ``(seed, epoch)``, so a resumed run draws exactly what a straight run draws.

``EpochSampler`` (shuffle or oversample rare classes), ``PseudoMixSampler`` + ``MixedDataset`` (pseudo-labelled
images mixed into every batch, DDP-aware), ``class_frequencies`` and ``oversample_weights``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from torch.utils.data import Dataset, Sampler

from steel_defect.data.annotations import defect_columns, frame_classes

__all__ = ["EpochSampler", "MixedDataset", "PseudoMixSampler", "class_frequencies", "oversample_weights"]


class EpochSampler(Sampler):
    """Yields ``(index, item_seed)`` pairs: a permutation (or, with ``weights``, a weighted draw with
    replacement) and per-item augmentation seeds, all a pure function of ``(seed, epoch)``.

    Lightning calls :meth:`set_epoch` before every training epoch, resumed ones included, so a run resumed
    from a checkpoint sees exactly the batches and augmentations of a run that went straight through.
    """

    def __init__(self, n: int, seed: int = 0, weights: np.ndarray | None = None) -> None:
        if n < 1:
            raise ValueError("the training split is empty")
        self.n, self.seed, self.epoch = int(n), int(seed), 0
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        if self.weights is not None and (len(self.weights) != n or (self.weights < 0).any()):
            raise ValueError(f"oversampling weights must be {n} non-negative numbers")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.n

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        if self.weights is None:
            order = rng.permutation(self.n)
        else:
            order = rng.choice(self.n, size=self.n, replace=True, p=self.weights / self.weights.sum())
        item_seeds = rng.integers(0, 2**31, size=self.n)
        return iter(zip(order.tolist(), item_seeds.tolist(), strict=True))


class PseudoMixSampler(Sampler):
    """Every batch of ``batch_size`` holds ``k = round(share * batch_size)`` (at least 1, at most
    ``batch_size - 1``) pseudo-labelled items after ``batch_size - k`` items of ``base``.

    Yields ``(index, item_seed)`` pairs for a :class:`MixedDataset`: pseudo items are offset by
    ``n_train`` and drawn from a permutation of the pseudo set per epoch (cycled when the epoch needs more);
    everything is a pure function of ``(seed, epoch)``, like :class:`EpochSampler`. With ``world_size`` W > 1
    the batches are interleaved item by item in rounds of W, so that the round-robin split of Lightning's
    distributed sampler wrapper gives every process whole mixed batches.
    """

    def __init__(
        self,
        base: EpochSampler,
        n_pseudo: int,
        batch_size: int,
        share: float,
        seed: int = 0,
        world_size: int = 1,
    ) -> None:
        if n_pseudo < 1:
            raise ValueError("the pseudo-label set is empty")
        if batch_size < 2:
            raise ValueError(
                f"data.batch_size must be >= 2 to mix pseudo-labels into each batch, got {batch_size}"
            )
        self.base, self.n_pseudo, self.batch_size, self.seed = base, int(n_pseudo), int(batch_size), int(seed)
        self.k = int(min(batch_size - 1, max(1, round(float(share) * batch_size))))
        self.world_size = max(1, int(world_size))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)
        self.base.set_epoch(epoch)

    def _batches(self) -> int:
        return -(-len(self.base) // (self.batch_size - self.k))

    def __len__(self) -> int:
        return self._batches() * self.k + len(self.base)

    def batches(self) -> list[list[tuple[int, int]]]:
        """This epoch's batches, in order (the last one may be short)."""
        real = list(iter(self.base))
        rng = np.random.default_rng([self.seed, self.epoch, 1])
        need = self._batches() * self.k
        order = np.concatenate([rng.permutation(self.n_pseudo) for _ in range(-(-need // self.n_pseudo))])[
            :need
        ]
        item_seeds = rng.integers(0, 2**31, size=need)
        out, step = [], self.batch_size - self.k
        for b in range(self._batches()):
            batch = real[b * step : (b + 1) * step]
            batch += [
                (self.base.n + int(order[j]), int(item_seeds[j])) for j in range(b * self.k, (b + 1) * self.k)
            ]
            out.append(batch)
        return out

    def __iter__(self):
        batches = self.batches()
        if self.world_size == 1:
            return iter([item for batch in batches for item in batch])
        flat = []
        for r in range(0, len(batches), self.world_size):
            group = batches[r : r + self.world_size]
            for j in range(max(len(b) for b in group)):
                flat += [b[j] for b in group if j < len(b)]
        return iter(flat)


class MixedDataset(Dataset):
    """Training items then pseudo-labelled items, addressed by ``index`` or ``(index, item_seed)``."""

    def __init__(self, train: Dataset, pseudo: Dataset) -> None:
        self.train, self.pseudo = train, pseudo

    def __len__(self) -> int:
        return len(self.train) + len(self.pseudo)

    def __getitem__(self, index):
        i, rest = (int(index[0]), (int(index[1]),)) if isinstance(index, tuple | list) else (int(index), ())
        n = len(self.train)
        return (
            self.train[(i, *rest) if rest else i] if i < n else self.pseudo[(i - n, *rest) if rest else i - n]
        )


def class_frequencies(df: pd.DataFrame) -> dict[int, float]:
    """Fraction of images containing each class, keyed by class id; key 0 is the defect-free fraction."""
    n = max(len(df), 1)
    freq = {0: float((df["has_defect"] == 0).sum()) / n}
    for c, col in enumerate(defect_columns(frame_classes(df)), start=1):
        freq[c] = float(df[col].sum()) / n
    return freq


def oversample_weights(df: pd.DataFrame, power: float = 0.5) -> np.ndarray:
    """Per-image sampling weight: max over present classes of ``(1 / frequency) ** power``.

    Defect-free images get ``(1 / defect_free_frequency) ** power``; ``power=0`` is uniform sampling.
    """
    freq = class_frequencies(df)
    k = frame_classes(df)
    flags = df[defect_columns(k)].to_numpy().astype(bool)
    with np.errstate(divide="ignore"):
        inv = np.array([1.0 / freq[c] if freq[c] > 0 else 0.0 for c in range(1, k + 1)]) ** power
    per_class = np.where(flags, inv[None, :], 0.0).max(axis=1, initial=0.0)
    free = (1.0 / freq[0]) ** power if freq[0] > 0 else 0.0
    return np.where(flags.any(axis=1), per_class, free)
