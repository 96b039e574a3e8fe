"""Training-step speed of the demo's network on this CPU: precision and decoder width, as ratios.

    .venv/bin/python bench/train_step.py [--crop 256 320] [--batch 8] [--rounds 2] [--no-bf16]

Each variant is a random-weight EfficientNet-Lite1 U-Net (``experiment=demo_cpu``'s network: half input
resolution, image head) taking full optimizer steps (forward, loss, backward, AdamW) on a random batch. The
variants are timed in alternation, ``--rounds`` times (the fastest step of each kept), and shown against the
reference (fp32, smp's decoder) timed in the same rounds: the machine is shared, absolute times drift.
bf16 autocast is fast only where the CPU has native bf16 (AVX512-BF16 / AMX); elsewhere it is emulated and
far slower, which is why the demo trains in fp32.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from steel_defect.models.factory import build_model  # noqa: E402

NET = {
    "arch": "Unet",
    "encoder_name": "tu-tf_efficientnet_lite1",
    "encoder_weights": None,
    "classes": 4,
    "image_head": True,
    "input_scale": 0.5,
}
HALF = [128, 64, 32, 16, 8]


def _variants(bf16: bool) -> dict[str, tuple[dict, bool]]:
    out = {
        "fp32, smp decoder (reference)": ({}, False),
        "fp32, half-width decoder (demo)": ({"decoder_channels": HALF}, False),
    }
    if bf16:
        out["bf16 autocast, half-width decoder"] = ({"decoder_channels": HALF}, True)
    return out


def _stepper(extra: dict, bf16: bool, batch: int, crop: tuple[int, int]):
    torch.manual_seed(0)
    net = build_model({**NET, **extra}).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.rand(batch, 3, *crop)

    def step() -> float:
        t0 = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            mask, cls, img = net(x)
            loss = mask.float().mean() + cls.float().mean() + img.float().mean()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return time.perf_counter() - t0

    step()  # warm-up: allocation, oneDNN primitive creation
    return step


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--crop", type=int, nargs=2, default=(256, 320), metavar=("H", "W"))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--no-bf16", action="store_true", help="skip bf16 (very slow where it is emulated)")
    args = parser.parse_args(argv)
    variants = _variants(not args.no_bf16)
    steppers = {
        name: _stepper(extra, bf16, args.batch, tuple(args.crop)) for name, (extra, bf16) in variants.items()
    }
    best = {name: float("inf") for name in variants}
    for _ in range(args.rounds):
        for name, step in steppers.items():
            best[name] = min(best[name], step())
    ref = best[next(iter(variants))]
    table = Table(
        title=f"Training step, Lite1 U-Net at half resolution, {args.batch}x{args.crop[0]}x{args.crop[1]} crops, "
        f"{torch.get_num_threads()} threads (CPU capability {torch.backends.cpu.get_cpu_capability()})"
    )
    for col in ("variant", "s/step (best)", "speed vs reference"):
        table.add_column(col, justify="left" if col == "variant" else "right")
    for name, sec in best.items():
        table.add_row(name, f"{sec:.2f}", f"{ref / sec:.2f}x")
    Console(width=120).print(table)
    return best


if __name__ == "__main__":
    main()
