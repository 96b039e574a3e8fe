"""Shared plain helpers and constants of the tests (fixtures live in tests/conftest.py).

* paths and tiny settings: :data:`REPO`, :data:`SHARED`, :data:`SAMPLES`, :data:`SMALL_SHAPE`, :data:`TINY_NET`;
* the tiny run (synthetic data + 1-step checkpoints): :func:`tiny_run`, :func:`isolated_ckpt`, :func:`config`;
* tiny checkpoints and robust thresholds: :func:`make_tiny_checkpoint`, :func:`separated_thresholds`;
* Hydra: :data:`CONF`, :data:`TINY` (train.py overrides), :func:`compose_train`;
* in-process Lightning: :class:`RandomSteel`, :func:`steel_loader`, :func:`tiny_module`, :func:`cpu_trainer`;
* the inspection service: :class:`Service`, :func:`request`, :func:`free_port`, :func:`group_pids`, ...
"""

from __future__ import annotations

import http.client
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

if TYPE_CHECKING:  # lightning and hydra are imported where used: conftest imports this module
    import lightning as L

    from steel_defect.models.module import SteelDefectModule

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


# ------------------------------------------------------------------------------------- the tiny run
#: the tiny run's images (the small synthetic shape)
SHAPE = SMALL_SHAPE
TINY_NET4 = {**TINY_NET, "classes": 4}
_RUNS: dict[str, dict[str, Path]] = {}


def tiny_run(base: Path) -> dict[str, Path]:
    """A synthetic data set, a 1-step checkpoint (``a``), a perturbed copy (``b``), a 1-step checkpoint of a
    net with an image head (``head``) and the run's split.json.

    Cached per base folder: every caller of one base (the session fixture ``run_files`` of
    tests/conftest.py) shares one build per session.
    """
    key = str(base)
    if key in _RUNS:
        return _RUNS[key]
    import lightning as L
    from torch.utils.data import DataLoader

    from steel_defect.data.annotations import load_annotations
    from steel_defect.data.dataset import SteelDataset
    from steel_defect.data.splits import save_split
    from steel_defect.models.module import SteelDefectModule
    from steel_defect.synthetic import generate_dataset

    data, run_dir = base / "data", base / "run"
    generate_dataset(data, n_train=8, n_test=4, seed=5, shape=SHAPE)
    frame = load_annotations(data, shape=SHAPE)

    def one_step_checkpoint(net: dict, seed: int, path: Path) -> Path:
        torch.manual_seed(seed)
        trainer = L.Trainer(
            max_steps=1,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )
        module = SteelDefectModule(net=net)
        trainer.fit(module, DataLoader(SteelDataset(frame, data / "train_images"), batch_size=4))
        trainer.save_checkpoint(path)
        return path

    a = one_step_checkpoint(dict(TINY_NET4), 0, run_dir / "checkpoints" / "epoch_000.ckpt")
    # A second, different checkpoint for ensembles: same file, every float weight perturbed.
    ckpt = torch.load(a, weights_only=True)
    gen = torch.Generator().manual_seed(1)
    ckpt["state_dict"] = {
        k: v + 0.05 * torch.randn(v.shape, generator=gen) if v.is_floating_point() else v
        for k, v in ckpt["state_dict"].items()
    }
    b = run_dir / "checkpoints" / "other.ckpt"
    torch.save(ckpt, b)
    head = one_step_checkpoint(
        {**TINY_NET4, "image_head": True}, 1, run_dir / "head" / "checkpoints" / "epoch_000.ckpt"
    )
    ids = frame["ImageId"].tolist()
    save_split({"train": ids[:4], "val": ids[4:]}, run_dir / "split.json")
    _RUNS[key] = {"data": data, "run": run_dir, "a": a, "b": b, "head": head}
    return _RUNS[key]


def isolated_ckpt(run_files, tmp_path: Path, which: str = "a") -> Path:
    """A copy of checkpoint ``which`` alone in a fresh folder (so a thresholds.yaml beside it is the test's
    own)."""
    folder = tmp_path / which / "ckpt"
    folder.mkdir(parents=True)
    return Path(shutil.copy(run_files[which], folder / "model.ckpt"))


def config(**overrides) -> dict:
    cfg = {"num_workers": 0, "batch_size": 2, "device": "cpu"}
    cfg.update(overrides)
    return cfg


# ----------------------------------------------------------------- tiny checkpoints, thresholds
def make_tiny_checkpoint(path: Path, image_head: bool = False) -> Path:
    """A real Lightning checkpoint of a tiny U-Net after one optimizer step (with optimizer states)."""
    import lightning as L

    from steel_defect.models.module import SteelDefectModule

    L.seed_everything(0, verbose=False)
    module = SteelDefectModule(net={**TINY_NET, "image_head": image_head}, scheduler={"name": "none"})
    g = torch.Generator().manual_seed(0)
    items = [
        {
            "image": torch.rand(3, *SMALL_SHAPE, generator=g),
            "mask": (torch.rand(4, *SMALL_SHAPE, generator=g) > 0.9).float(),
            "labels": torch.ones(4),
        }
        for _ in range(2)
    ]
    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(items, batch_size=2))
    path.parent.mkdir(parents=True, exist_ok=True)
    trainer.save_checkpoint(path)
    return path


def separated_thresholds(
    net: torch.nn.Module, images_dir: Path, out: Path, tta: list[str], margin: float = 1e-4
) -> Path:
    """Write a thresholds.yaml whose pixel/class thresholds sit in gaps of ``net``'s probabilities (under the
    predictions' ``tta``) on the images (none within ``margin``), so that runtimes agreeing to ~1e-6 give
    identical masks, and that still gives non-empty masks (about the top 10% of pixels per class, most
    classes kept). For a net with an image head, the image gate uses it too (t_img in a gap of its
    probabilities, most images kept)."""
    from steel_defect.data.dataset import PredictDataset
    from steel_defect.inference.predictor import predict_batch
    from steel_defect.postprocess.params import PostprocessParams, save_thresholds

    ds = PredictDataset(images_dir)
    x = torch.stack([ds[i]["image"] for i in range(len(ds))])
    mask_probs, class_probs, image_probs = predict_batch(net, x, tta=tta)

    def gap_near(values: np.ndarray, q: float) -> float:
        v = np.unique(values.astype(np.float64))
        mids, gaps = (v[1:] + v[:-1]) / 2, v[1:] - v[:-1]
        ok = np.flatnonzero(gaps > 2 * margin)
        if not len(ok):
            raise AssertionError("no probability gap wide enough for a robust threshold")
        target = np.quantile(v, q)
        return float(mids[ok[np.argmin(np.abs(mids[ok] - target))]])

    params = PostprocessParams(
        t_img=None,
        t_cls=[gap_near(np.concatenate([class_probs[:, c].numpy(), [0.0, 1.0]]), 0.3) for c in range(4)],
        t_pix=[gap_near(mask_probs[:, c].flatten().numpy(), 0.9) for c in range(4)],
        min_area=[None] * 4,
        max_area=[None] * 4,
        min_component=[None] * 4,
        reference_shape=None,
    )
    if image_probs is not None:
        params.t_img = gap_near(np.concatenate([image_probs.numpy(), [0.0, 1.0]]), 0.3)
        params.img_source = "image_head"
    return save_thresholds(params, out)


# --------------------------------------------------------------------------------------- Hydra
CONF = REPO / "conf"
#: Tiny, fast train.py overrides (64x320 synthetic images, no augmentation cost to speak of).
TINY = [
    f"data.shape=[{SMALL_SHAPE[0]},{SMALL_SHAPE[1]}]",
    "data.synthetic.n_train=40",
    "data.synthetic.n_test=4",
    "data.crop_width=100",  # not a multiple of the stride: the net pads
    "data.batch_size=4",
    "data.val_batch_size=4",
    "data.num_workers=0",
    "trainer.accelerator=cpu",
    "trainer.log_every_n_steps=1",
    "trainer.num_sanity_val_steps=0",
    "~callbacks.rich_progress_bar",
]


def compose_train(overrides: list[str], tmp_path: Path):
    """Compose conf/train.yaml as `python train.py` would, with the run folders under tmp_path."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=overrides, return_hydra_config=True)
    HydraConfig().set_config(cfg)
    with open_dict(cfg):
        cfg.paths.root_dir = str(REPO)
        cfg.paths.data_dir = str(tmp_path / "data")
        cfg.paths.log_dir = str(tmp_path / "logs")
        cfg.paths.output_dir = str(tmp_path / "run")
    return cfg


# ---------------------------------------------------------------------------- in-process Lightning
RANDOM_STEEL_SHAPE = (64, 128)


class RandomSteel(Dataset):
    """Random images with a few rectangular defects: the data pipeline's batch dict layout."""

    def __init__(self, n: int, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.images = torch.rand(n, 3, *RANDOM_STEEL_SHAPE, generator=g)
        self.masks = torch.zeros(n, 4, *RANDOM_STEEL_SHAPE)
        for i in range(n):
            c = int(torch.randint(0, 4, (1,), generator=g))
            if i % 3:  # every third image is defect-free
                self.masks[i, c, 10:30, 20 + 5 * i : 60 + 5 * i] = 1
                self.images[i, :, 10:30, 20 + 5 * i : 60 + 5 * i] *= 0.2
        self.labels = (self.masks.flatten(2).amax(2) > 0).float()

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {
            "image": self.images[i],
            "mask": self.masks[i],
            "labels": self.labels[i],
            "image_id": f"img{i}.jpg",
        }


def steel_loader(n: int = 4, seed: int = 0, batch_size: int = 2) -> DataLoader:
    return DataLoader(RandomSteel(n, seed), batch_size=batch_size, shuffle=False, num_workers=0)


def tiny_module(**kw) -> SteelDefectModule:
    from steel_defect.models.module import SteelDefectModule

    args = {"net": dict(TINY_NET), "scheduler": {"name": "cosine", "warmup_steps": 1}}
    args.update(kw)
    return SteelDefectModule(**args)


def cpu_trainer(tmp_path, **kw) -> L.Trainer:
    import lightning as L

    args = dict(
        accelerator="cpu",
        devices=1,
        default_root_dir=tmp_path,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        enable_checkpointing=False,
    )
    args.update(kw)
    return L.Trainer(**args)


# --------------------------------------------------------------------------- the inspection service
REAL_TEST = SHARED / "data" / "severstal-real" / "test_images"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(port: int, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.getheader("content-type") or "", resp.read()
    finally:
        conn.close()


def multipart(field: str, filename: str, data: bytes) -> tuple[bytes, dict]:
    boundary = uuid.uuid4().hex
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def pil_bytes(fmt: str, size: tuple[int, int] = (40, 30), mode: str = "RGB") -> bytes:
    """An image of ``size`` (width, height) encoded by Pillow as ``fmt``."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new(mode, size, 90).save(buf, fmt)
    return buf.getvalue()


EPS = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"


def group_pids(pgid: int) -> list[int]:
    """Live (not zombie) processes of the process group ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            found.append(int(entry))
    return found


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


class Service:
    """A ``python -m steel_defect.serve`` process in its own process group, stopped by its PID (``env``:
    extra environment variables, e.g. the API key)."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = log
        environ = {
            k: v for k, v in os.environ.items() if k not in ("STEEL_DEFECT_API_KEY", "LIT_SERVER_API_KEY")
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "steel_defect.deploy.serve", *args, f"port={self.port}", "host=127.0.0.1"],
            cwd=REPO,
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**environ, **(env or {})},
        )

    def wait_healthy(self, seconds: float = 120) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"the service exited ({self.proc.returncode}): {self.log.read_text()[-3000:]}"
                )
            try:
                if request(self.port, "GET", "/health")[0] == 200:
                    return
            except OSError:
                pass
            time.sleep(0.3)
        raise AssertionError(
            f"the service was not healthy within {seconds} s: {self.log.read_text()[-3000:]}"
        )

    def stop(self) -> None:
        """SIGTERM to the PID we started (as systemd and docker do), then to its group if anything is left."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        deadline = time.monotonic() + 10
        while group_pids(self.proc.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        for pid in group_pids(
            self.proc.pid
        ):  # never reached when SIGTERM works (tests/test_serve_lifecycle.py)
            os.kill(pid, signal.SIGKILL)


def regular_images(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("*.jpg") if p.is_file() and not p.is_symlink())


def StopAfterEpochs(epochs: int):  # noqa: N802  (a Hydra _target_ that reads like the callback class)
    """A Lightning callback that stops cleanly after ``epochs`` training epochs (time-sliced sessions: resume
    later with ckpt_path); built here so that importing this module does not import Lightning."""
    import lightning as L

    if epochs < 1:
        raise ValueError(f"callbacks.stop_after.epochs must be >= 1, got {epochs}")

    class _StopAfterEpochs(L.Callback):
        def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
            if trainer.current_epoch + 1 >= epochs:
                trainer.should_stop = True

    return _StopAfterEpochs()
