"""EMA of the weights: validated, checkpointed and tested as the averaged weights."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from steel_defect.models import load_net_from_checkpoint
from steel_defect.training.callbacks import EMA
from tests.helpers import cpu_trainer, steel_loader, tiny_module

pytestmark = pytest.mark.usefixtures("one_torch_thread", "quiet_trainer_warnings")


def _fit_with_ema(tmp_path, decay: float = 0.5):
    torch.manual_seed(0)
    module = tiny_module(optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-2})
    ckpt = ModelCheckpoint(dirpath=tmp_path / "ckpt", filename="best", monitor="val/dice", mode="max")
    ema = EMA(decay=decay)
    trainer = cpu_trainer(tmp_path, max_steps=4, callbacks=[ckpt, ema], enable_checkpointing=True)
    trainer.fit(module, train_dataloaders=steel_loader(4), val_dataloaders=steel_loader(2, seed=1))
    return module, trainer, ckpt.best_model_path, ema


def test_checkpoint_holds_the_average_and_test_scores_it(tmp_path):
    module, trainer, best, ema = _fit_with_ema(tmp_path)
    saved = torch.load(best, weights_only=True)
    averaged, raw = saved["state_dict"], saved["current_model_state"]
    differs = [
        k for k in averaged if averaged[k].is_floating_point() and not torch.equal(averaged[k], raw[k])
    ]
    assert differs, "the EMA weights should differ from the raw weights after 4 steps at decay 0.5"
    net, _ = load_net_from_checkpoint(best)
    for k, v in net.state_dict().items():
        assert torch.equal(v, averaged[f"net.{k}"])
    # Lightning's callback would put the raw weights back when test() loads the checkpoint; ours keeps the EMA.
    trainer.test(module, dataloaders=steel_loader(2, seed=2), ckpt_path=best, weights_only=True)
    for k, v in module.state_dict().items():
        if k in averaged:
            assert torch.equal(v, averaged[k]), k


@pytest.mark.slow
def test_the_average_follows_the_decay(tmp_path):
    """decay -> 1 keeps the first weights (the EMA starts as a copy of the step-0 weights); a small decay
    follows the trained ones."""
    _, _, best_slow, _ = _fit_with_ema(tmp_path / "slow", decay=0.999999)
    _, _, best_fast, _ = _fit_with_ema(tmp_path / "fast", decay=1e-6)
    slow, fast = (torch.load(p, weights_only=True) for p in (best_slow, best_fast))
    # a trained parameter (net.mean/std are constant buffers)
    key = "net.model.encoder.model.conv_stem.weight"
    gap_slow = (slow["state_dict"][key] - slow["current_model_state"][key]).abs().max()
    gap_fast = (fast["state_dict"][key] - fast["current_model_state"][key]).abs().max()
    assert gap_fast < 1e-4 < gap_slow


@pytest.mark.parametrize("decay", [0, 1, 1.5, "x", True])
def test_bad_decay_names_the_key(decay):
    with pytest.raises(ValueError, match="callbacks.ema.decay"):
        EMA(decay=decay)
