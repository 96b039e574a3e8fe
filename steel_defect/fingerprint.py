"""Content fingerprints of network weights: what a thresholds.yaml (or an ONNX model) was tuned for.

A fingerprint is the SHA-256 of every tensor of the state dict (name, dtype, shape and bytes, in name
order), first 16 hex digits: re-saving a checkpoint, moving it or renaming it keeps it; any changed weight,
another checkpoint of the same run or an EMA vs raw copy gives another. Needs torch only.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping

import torch

__all__ = ["net_fingerprint", "weights_fingerprint"]


def weights_fingerprint(state: Mapping[str, torch.Tensor]) -> str:
    """16 hex digits of SHA-256 over ``state``'s tensors (name, dtype, shape, contiguous CPU bytes)."""
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name].detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def net_fingerprint(net: torch.nn.Module) -> str | None:
    """The fingerprint of a network's weights; for an exported ONNX model (``OnnxNet``), the one of the
    checkpoint it was exported from (None for a model exported before fingerprints existed)."""
    if hasattr(net, "source_fingerprint"):
        return net.source_fingerprint
    return weights_fingerprint(net.state_dict())
