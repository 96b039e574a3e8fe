"""Pretrained encoder weights for air-gapped machines: download once, train offline from the file.

    python -m steel_defect.weights fetch --model unet_effb1 --out b1.safetensors     # on a connected machine
    python -m steel_defect.weights fetch --encoder tu-efficientnet_b1 --out b1.pth
    python train.py model=unet_effb1 model.net.encoder_weights=/path/b1.safetensors   # on the offline one

``fetch`` builds the model's encoder with its pretrained weights (downloading them as training would),
writes the encoder's state dict (``.safetensors`` or ``.pth``) to a temporary file beside ``--out``, loads it
back the way ``model.net.encoder_weights=FILE`` does (strict key and shape check) and compares every tensor,
and only then renames it to ``--out``, so a file it writes is known to load. An existing ``--out`` is
replaced only when it is a weights file of the same format (a safetensors file, or a torch zip archive);
anything else is refused before the download.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import struct
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from steel_defect.guard import refuse_unless_own
from steel_defect.io import atomic_save

__all__ = ["encoder_state_dict", "fetch", "is_weights_file", "model_net_config"]

WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
#: A safetensors header larger than this is not one this command wrote (an encoder's is a few hundred KB).
MAX_SAFETENSORS_HEADER = 100_000_000

CONF_MODELS = Path(__file__).resolve().parents[2] / "conf" / "model"


def model_net_config(model: str) -> dict[str, Any]:
    """``model.net`` of ``conf/model/<model>.yaml`` (composed with its defaults), as plain values."""
    names = sorted(p.stem for p in CONF_MODELS.glob("*.yaml")) if CONF_MODELS.is_dir() else []
    if model not in names:
        raise ValueError(
            f"--model {model!r}: no conf/model/{model}.yaml beside this installation"
            + (f"; valid: {', '.join(names)}" if names else " (use --encoder NAME instead)")
        )
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    GlobalHydra.instance().clear()
    with initialize_config_dir(str(CONF_MODELS.parent), version_base="1.3"):
        cfg = compose("train", overrides=[f"model={model}"])
    GlobalHydra.instance().clear()
    return dict(OmegaConf.to_container(cfg.model.net, resolve=True))


def encoder_state_dict(net: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The encoder's own state dict (timm's model for ``tu-`` encoders), contiguous CPU tensors."""
    encoder = net.model.encoder
    target = (
        getattr(encoder, "model", encoder) if str(net.config["encoder_name"]).startswith("tu-") else encoder
    )
    return {k: v.detach().cpu().contiguous() for k, v in target.state_dict().items()}


def is_weights_file(path: Path) -> bool:
    """True when ``path`` is a weights file of the format its suffix names, as :func:`fetch` writes them:
    a safetensors file (a length-prefixed JSON header of tensor entries) for ``.safetensors``, a torch zip
    archive (``torch.save``) for ``.pth``/``.pt``/``.bin``. Sniffed from the bytes: nothing is unpickled."""
    if path.suffix not in WEIGHT_SUFFIXES:
        return False
    if path.suffix != ".safetensors":
        try:
            with zipfile.ZipFile(path) as zf:
                return any(name.endswith("/data.pkl") for name in zf.namelist())
        except (OSError, zipfile.BadZipFile):
            return False
    try:
        with open(path, "rb") as fh:
            (size,) = struct.unpack("<Q", fh.read(8))
            if size > min(MAX_SAFETENSORS_HEADER, path.stat().st_size - 8):
                return False
            header = json.loads(fh.read(size))
    except (OSError, struct.error, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return False
    return isinstance(header, dict) and all(
        key == "__metadata__" or (isinstance(v, dict) and "dtype" in v and "data_offsets" in v)
        for key, v in header.items()
    )


def fetch(net_cfg: dict[str, Any], out: str | os.PathLike) -> dict[str, Any]:
    """Build the encoder with ``net_cfg``'s pretrained weights, write them to ``out``, verify the file."""
    from steel_defect.models.factory import build_model

    out = Path(out)
    if out.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"--out {out}: use a .safetensors or .pth file name")
    refuse_unless_own(out, is_weights_file, what="--out", kind=f"{out.suffix} weights file")
    if net_cfg.get("encoder_weights") in (None, "null"):
        raise ValueError(
            f"encoder {net_cfg['encoder_name']!r}: encoder_weights is null, there is nothing to fetch"
        )
    cfg = {**net_cfg, "image_head": False}
    net = build_model(cfg)  # downloads (or reads the package) as training would
    state = encoder_state_dict(net)

    def write_and_verify(tmp: str) -> None:
        if out.suffix == ".safetensors":
            from safetensors.torch import save

            Path(tmp).write_bytes(save(state))
        else:
            torch.save(state, tmp)
        back = encoder_state_dict(build_model({**cfg, "encoder_weights": tmp}))
        bad = [k for k in state if k not in back or not torch.equal(state[k], back[k])]
        if bad or set(back) != set(state):
            raise RuntimeError(
                f"{out}: the written weights did not load back identically ({bad[:3]}); nothing was written"
            )

    atomic_save(out, write_and_verify)  # its temporary file keeps out's suffix, which build_model goes by
    digest = hashlib.sha256(out.read_bytes()).hexdigest()
    return {
        "encoder": net_cfg["encoder_name"],
        "source": net_cfg["encoder_weights"],
        "out": str(out),
        "tensors": len(state),
        "parameters": int(sum(v.numel() for v in state.values())),
        "bytes": out.stat().st_size,
        "sha256": digest,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m steel_defect.weights", description=__doc__.split("\n\n")[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    f = sub.add_parser("fetch", help="download an encoder's pretrained weights into a file")
    which = f.add_mutually_exclusive_group(required=True)
    which.add_argument("--model", help="a model config name (conf/model/NAME.yaml), e.g. unet_effb1")
    which.add_argument("--encoder", help="an smp encoder name, e.g. tu-efficientnet_b1")
    f.add_argument("--weights", default="imagenet", help="with --encoder: the weight name (default imagenet)")
    f.add_argument("--out", required=True, help="the file to write (.safetensors or .pth)")
    args = parser.parse_args(argv)
    try:
        if args.model:
            net_cfg = model_net_config(args.model)
        else:
            net_cfg = {"encoder_name": args.encoder, "encoder_weights": args.weights, "classes": 4}
        info = fetch(net_cfg, args.out)
    except (ValueError, RuntimeError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(
        f"wrote {info['out']}: {info['encoder']} weights ({info['source']}), {info['tensors']} tensors, "
        f"{info['parameters']:,} parameters, {info['bytes'] / 1e6:.1f} MB, sha256 {info['sha256'][:16]}...\n"
        f"verified: it loads back identically. Offline: model.net.encoder_weights={Path(info['out']).resolve()}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
