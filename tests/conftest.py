"""Shared fixtures (plain helpers and constants: tests/helpers.py). Tests never touch the network, and use tiny
images/encoders unless a test is about size."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import pytest  # noqa: E402

from tests.helpers import REPO, SAMPLES, SHARED, SMALL_SHAPE, TINY_NET, tiny_run  # noqa: E402, F401


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


@pytest.fixture(scope="session")
def run_files(tmp_path_factory) -> dict[str, Path]:
    """The tiny run of :func:`tests.helpers.tiny_run` (synthetic data, checkpoints ``a``/``b``/``head``, split),
    built once per session."""
    return tiny_run(tmp_path_factory.getbasetemp() / "tiny_run")


@pytest.fixture
def quiet_trainer_warnings():
    """Silence Lightning's CPU-only warnings (few workers, GPU not used) in in-process Trainer tests."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        warnings.filterwarnings("ignore", message=".*GPU available but not used.*")
        yield
