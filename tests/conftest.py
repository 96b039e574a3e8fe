"""Shared fixtures. Tests never touch the network, and use tiny images/encoders unless a test is about size."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SAMPLES = SHARED / "data" / "severstal-samples"
SMALL_SHAPE = (64, 320)
#: The network of unit tests (conf/model/tiny.yaml holds the same for train.py tests): timm's test EfficientNet
#: (random weights) with a narrow decoder, 0.17M parameters. A checkpoint is ~2 MB, not the 164 MB of a
#: ResNet-18 U-Net with its AdamW state (those filled a CI runner's disk), and a forward is ~20x faster.
TINY_NET: dict = {
    "arch": "Unet",
    "encoder_name": "tu-test_efficientnet",
    "encoder_weights": None,
    "decoder_channels": [32, 32, 16, 16, 8],
}


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def samples_dir() -> Path:
    """The real Kaggle samples folder beside the checkout (../shared/data/severstal-samples)."""
    if not (SAMPLES / "train.csv").is_file():
        pytest.skip(f"real Severstal samples not found at {SAMPLES} (../shared is not beside this checkout)")
    return SAMPLES


@pytest.fixture(scope="session")
def small_synthetic(tmp_path_factory) -> Path:
    """A small synthetic Kaggle-layout data set at 64x320, generated once per session."""
    from steel_defect.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("synthetic") / "set"
    generate_dataset(root, n_train=40, n_test=8, seed=3, shape=SMALL_SHAPE)
    return root


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny CPU tests run faster on one thread, especially on a machine shared with other jobs."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
