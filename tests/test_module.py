"""SteelDefectModule (Lightning): training/validation/test/predict, logged metrics, checkpoints, hparams."""

from __future__ import annotations

import functools
import pickle

import lightning as L
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import ModelCheckpoint
from omegaconf import OmegaConf
from torch.utils.data import DataLoader

from steel_defect.models import SteelDefectModule, load_net_from_checkpoint
from steel_defect.models.module import cosine_warmup_factor
from steel_defect.postprocess.params import PostprocessParams
from tests.conftest import TINY_NET
from tests.helpers import RandomSteel, cpu_trainer, steel_loader, tiny_module

H, W = 64, 128
NET = TINY_NET
PP_RAW = PostprocessParams.disabled().to_dict()


# tiny CPU tests run faster on one thread (see conftest.one_torch_thread)
pytestmark = pytest.mark.usefixtures("one_torch_thread", "quiet_trainer_warnings")


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    """A module fitted for 2 steps with a Trainer-saved checkpoint; returns (module, trainer, ckpt path)."""
    tmp = tmp_path_factory.mktemp("fit")
    L.seed_everything(0, verbose=False)
    module = tiny_module()
    ckpt = ModelCheckpoint(dirpath=tmp / "ckpt", filename="last", monitor="val/dice", mode="max")
    trainer = cpu_trainer(tmp, max_steps=2, limit_val_batches=2, callbacks=[ckpt], enable_checkpointing=True)
    trainer.fit(module, train_dataloaders=steel_loader(4), val_dataloaders=steel_loader(4, seed=1))
    return module, trainer, ckpt.best_model_path


# ------------------------------------------------------------------------------------------------------
# Fit / validate / test / predict
# ------------------------------------------------------------------------------------------------------
def test_fit_logs_train_and_val_metrics(fitted):
    _, trainer, _ = fitted
    keys = set(trainer.callback_metrics)
    expected = {"train/loss", "train/loss_mask", "train/loss_dice", "train/loss_cls"}
    expected |= {"val/loss", "val/loss_mask", "val/loss_dice", "val/loss_cls", "val/dice", "val/dice_raw"}
    expected |= {f"val/dice_{c}" for c in range(1, 5)} | {f"val/dice_raw_{c}" for c in range(1, 5)}
    expected |= {f"val/cls_{m}_{c}" for m in ("precision", "recall", "f1") for c in range(1, 5)}
    assert expected <= keys, sorted(expected - keys)
    for key in expected:
        value = float(trainer.callback_metrics[key])
        assert value == value, key  # not NaN
    for c in range(1, 5):
        assert 0.0 <= float(trainer.callback_metrics[f"val/dice_{c}"]) <= 1.0


def test_validation_dice_values_match_direct_computation(tmp_path):
    """With post-processing disabled val/dice == val/dice_raw == Kaggle Dice of (sigmoid >= 0.5)."""
    from steel_defect.metrics import kaggle_dice

    L.seed_everything(1, verbose=False)
    module = tiny_module(postprocess=PP_RAW)
    out = cpu_trainer(tmp_path).validate(module, dataloaders=steel_loader(4), verbose=False)[0]
    assert out["val/dice"] == pytest.approx(out["val/dice_raw"])
    module.eval()
    data = RandomSteel(4)
    with torch.no_grad():
        mask_logits, _ = module(data.images)
    expected = kaggle_dice((torch.sigmoid(mask_logits) >= 0.5).numpy(), data.masks.bool().numpy())
    assert out["val/dice"] == pytest.approx(float(expected), abs=1e-6)


def test_perfect_predictions_give_dice_one_and_cls_f1_one(tmp_path):
    """Feed a network whose logits are the targets: every Dice and the head's F1 are 1."""
    module = tiny_module(postprocess=PP_RAW)
    data = RandomSteel(4)

    def oracle(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        i = [int(torch.nonzero((data.images == xi).flatten(1).all(1))[0]) for xi in x]
        return data.masks[i] * 20 - 10, data.labels[i] * 20 - 10

    module.forward = oracle  # instance attribute: used by module(x)
    out = cpu_trainer(tmp_path).validate(module, dataloaders=steel_loader(4), verbose=False)[0]
    assert out["val/dice"] == pytest.approx(1.0) and out["val/dice_raw"] == pytest.approx(1.0)
    present = data.labels.sum(0) > 0
    for c in range(4):
        if present[c]:
            assert out[f"val/cls_f1_{c + 1}"] == pytest.approx(1.0)


def test_test_step_mirrors_validation(tmp_path, fitted):
    module, _, _ = fitted
    out = cpu_trainer(tmp_path).test(module, dataloaders=steel_loader(2), verbose=False)[0]
    expected = {"test/loss", "test/dice_raw", "test/dice_raw_4", "test/dice_default", "test/dice_default_4"}
    expected |= {"test/cls_recall_2", "test/img_auroc_max_cls"}
    assert expected <= set(out), sorted(expected - set(out))
    # No tuned thresholds were handed to the module: no (fake) tuned figure, and no head -> no head AUROC.
    assert module.tuned_postprocess is None
    assert not any(k.startswith("test/dice_tuned") or k == "test/img_auroc_head" for k in out)
    assert "test/dice" not in out  # renamed test/dice_default: which post-processing is explicit


def test_overfitting_one_batch_lowers_the_loss(tmp_path):
    L.seed_everything(2, verbose=False)
    module = tiny_module(optimizer={"_target_": "torch.optim.AdamW", "lr": 3e-2}, scheduler={"name": "none"})
    losses: list[float] = []

    class Record(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    one_batch = DataLoader([next(iter(steel_loader(2)))], batch_size=None)
    cpu_trainer(tmp_path, max_steps=15, limit_val_batches=0, callbacks=[Record()]).fit(module, one_batch)
    print(f"overfit one batch: training loss {losses[0]:.4f} -> {losses[-1]:.4f}")
    assert len(losses) == 15
    assert losses[-1] < 0.6 * losses[0], losses


@pytest.mark.parametrize("name", ["cosine", "onecycle", "none"])
def test_schedulers_step_per_optimizer_step(tmp_path, name):
    module = tiny_module(scheduler={"name": name, "warmup_steps": 2, "min_lr_ratio": 0.1})
    lrs = []

    class Track(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    cpu_trainer(tmp_path, max_steps=4, limit_val_batches=0, callbacks=[Track()]).fit(module, steel_loader(8))
    assert len(lrs) == 4
    if name == "none":
        assert lrs == [3e-4] * 4
    elif name == "cosine":  # 2 warm-up steps, then cosine to 0.1 at step 4
        assert lrs == pytest.approx([3e-4 * f for f in (0.5, 1.0, 1.0, 0.55)])
    else:
        assert lrs[0] < lrs[1] and lrs[3] < lrs[2] and len(set(lrs)) == 4  # one cycle over 4 steps


def test_cosine_warmup_factor():
    assert cosine_warmup_factor(0, 10, 2, 0.1) == pytest.approx(0.5)
    assert cosine_warmup_factor(1, 10, 2, 0.1) == pytest.approx(1.0)
    assert cosine_warmup_factor(2, 10, 2, 0.1) == pytest.approx(1.0)
    assert cosine_warmup_factor(6, 10, 2, 0.1) == pytest.approx(0.55)
    assert cosine_warmup_factor(10, 10, 2, 0.1) == pytest.approx(0.1)
    assert cosine_warmup_factor(50, 10, 2, 0.1) == pytest.approx(0.1)


# ------------------------------------------------------------------------------------------------------
# Checkpoints
# ------------------------------------------------------------------------------------------------------
def test_checkpoint_is_plain_data_and_rebuilds_identically(fitted):
    module, _, path = fitted
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    meta = ckpt["steel_defect"]
    assert meta["format_version"] == 1 and meta["classes"] == ["1", "2", "3", "4"]
    assert meta["net"]["encoder_weights"] is None and meta["net"]["mean"] == module.net.config["mean"]
    assert PostprocessParams.from_dict(meta["postprocess"]) == PostprocessParams.notebook_defaults()
    assert ckpt["hyper_parameters"]["net"]["mean"] is not None
    yaml.safe_dump(meta)
    net, meta2 = load_net_from_checkpoint(path)
    assert meta2 == meta and not net.training
    module.eval()
    x = torch.rand(2, 3, H, W)
    with torch.no_grad():
        a, b = module.net(x), net(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_onecycle_checkpoint_loads_weights_only_and_resumes(tmp_path):
    module = tiny_module(scheduler={"name": "onecycle"})
    ckpt = ModelCheckpoint(dirpath=tmp_path, every_n_train_steps=2, save_top_k=-1, filename="{step}")
    trainer = cpu_trainer(
        tmp_path, max_steps=4, limit_val_batches=0, callbacks=[ckpt], enable_checkpointing=True
    )
    trainer.fit(module, steel_loader(8))
    path = tmp_path / "step=2.ckpt"
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    assert ckpt["lr_schedulers"] and "steel_defect" in ckpt and ckpt["global_step"] == 2
    resumed = tiny_module(scheduler={"name": "onecycle"})
    trainer = cpu_trainer(tmp_path, max_steps=4, limit_val_batches=0)
    trainer.fit(resumed, steel_loader(8), ckpt_path=path, weights_only=True)
    assert trainer.global_step == 4
    assert trainer.lr_scheduler_configs[0].scheduler.last_epoch == 4


def test_load_net_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"missing\.ckpt"):
        load_net_from_checkpoint(tmp_path / "missing.ckpt")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"net.mean": torch.zeros(1)}}, other)
    with pytest.raises(ValueError, match=r"not a steel-defect checkpoint: .*other\.ckpt"):
        load_net_from_checkpoint(other)
    evil = tmp_path / "evil.ckpt"
    torch.save(
        {
            "state_dict": {},
            "steel_defect": {"format_version": 1, "net": NET},
            "x": functools.partial(print, 1),
        },
        evil,
    )
    with pytest.raises(pickle.UnpicklingError, match=r"[Ww]eights only"):
        load_net_from_checkpoint(evil)


# ------------------------------------------------------------------------------------------------------
# Hyper-parameters
# ------------------------------------------------------------------------------------------------------
def test_hparams_are_plain_even_from_dictconfig():
    cfg = OmegaConf.create(
        {
            "net": NET,
            "loss": {"pos_weight": [1, 2, 3, 4], "mask_loss": "focal"},
            "optimizer": {"_target_": "torch.optim.SGD", "lr": 0.01, "momentum": 0.9},
            "scheduler": {"name": "onecycle"},
            "postprocess": {"t_pix": [0.4, 0.5, 0.5, 0.6]},
        }
    )
    module = SteelDefectModule(
        net=cfg.net,
        loss=cfg.loss,
        optimizer=cfg.optimizer,
        scheduler=cfg.scheduler,
        postprocess=cfg.postprocess,
    )
    hp = dict(module.hparams)
    text = yaml.safe_dump(hp)  # fails on any non-plain value
    assert "DictConfig" not in text
    assert hp["net"]["mean"] == [0.485, 0.456, 0.406] and hp["net"]["encoder_weights"] is None
    assert hp["loss"]["pos_weight"] == [1, 2, 3, 4]
    assert module.pp_params.t_pix == [0.4, 0.5, 0.5, 0.6]


@pytest.mark.parametrize("lr", [-1e-3, 0, "fast"])
def test_bad_lr_names_the_key(lr):
    with pytest.raises(ValueError, match=r"model\.optimizer\.lr"):
        tiny_module(optimizer={"_target_": "torch.optim.AdamW", "lr": lr})


def test_bad_scheduler_and_optimizer_are_named():
    with pytest.raises(ValueError, match=r"model\.scheduler\.name='step'.*cosine, onecycle, none"):
        tiny_module(scheduler={"name": "step"})
    with pytest.raises(ValueError, match=r"model\.scheduler\.warmup"):
        tiny_module(scheduler={"name": "cosine", "warmup": 3})
    with pytest.raises(ValueError, match=r"model\.optimizer\._target_"):
        tiny_module(optimizer={"_target_": "torch.nn.Linear", "lr": 1e-3})
    with pytest.raises(
        ValueError, match=r"model\.optimizer\._target_='torch\.optim\.Adamw' cannot be imported"
    ):
        tiny_module(optimizer={"_target_": "torch.optim.Adamw", "lr": 1e-3})
    with pytest.raises(ValueError, match=r"model\.loss\.dice"):
        tiny_module(loss={"dice": 1.0})
    with pytest.raises(ValueError, match=r"model\.cls_threshold"):
        tiny_module(cls_threshold=1.5)
    with pytest.raises(ValueError, match=r"model\.net\.arch"):
        tiny_module(net={**NET, "arch": "NoNet"})


def test_channels_last_gives_the_same_outputs(tmp_path):
    L.seed_everything(3, verbose=False)
    plain = tiny_module(postprocess=PP_RAW)
    fast = tiny_module(postprocess=PP_RAW, channels_last=True)
    fast.load_state_dict(plain.state_dict())
    a = cpu_trainer(tmp_path).validate(plain, dataloaders=steel_loader(2), verbose=False)[0]
    b = cpu_trainer(tmp_path).validate(fast, dataloaders=steel_loader(2), verbose=False)[0]
    assert fast.net.model.encoder.model.conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    assert b["val/dice"] == pytest.approx(a["val/dice"], abs=1e-6)
    assert b["val/loss"] == pytest.approx(a["val/loss"], rel=1e-4)


# ------------------------------------------------------------------------------------------------------
# Image head, and the test stage's three Dice figures
# ------------------------------------------------------------------------------------------------------
def _expected_dice(module, data: RandomSteel, params: PostprocessParams) -> float:
    """Kaggle Dice of ``postprocess(..., params)`` computed directly from the module's outputs."""
    from steel_defect.metrics import kaggle_dice
    from steel_defect.models.factory import split_outputs
    from steel_defect.postprocess.apply import postprocess

    module.eval()
    with torch.no_grad():
        mask_logits, class_logits, image_logits = split_outputs(module(data.images))
    image = None if image_logits is None else image_logits.sigmoid().numpy()
    pred = postprocess(
        mask_logits.sigmoid().numpy(), class_logits.sigmoid().numpy(), params, image_probs=image
    )
    return float(kaggle_dice(pred, data.masks.bool().numpy()))


def test_image_head_module_trains_logs_its_loss_and_both_image_scores(tmp_path):
    L.seed_everything(3, verbose=False)
    module = tiny_module(net={**NET, "image_head": True}, loss={"image_weight": 0.7})
    assert module.criterion.image_weight == 0.7 and module.hparams.net["image_head"] is True
    trainer = cpu_trainer(tmp_path, max_steps=2, limit_val_batches=2)
    trainer.fit(module, train_dataloaders=steel_loader(4), val_dataloaders=steel_loader(6, seed=1))
    keys = set(trainer.callback_metrics)
    expected = {"train/loss_image", "val/loss_image", "val/img_auroc_max_cls", "val/img_auroc_head"}
    assert expected <= keys, sorted(expected - keys)
    for key in ("val/img_auroc_max_cls", "val/img_auroc_head"):
        assert 0.0 <= float(trainer.callback_metrics[key]) <= 1.0
    # The image head's AUROC is that of its own probabilities on "image has any defect".
    from torchmetrics.functional.classification import binary_auroc

    data = RandomSteel(6, seed=1)
    module.eval()
    with torch.no_grad():
        _, cls, img = module(data.images[:4])
    has = (data.labels[:4].sum(1) > 0).int()
    out = cpu_trainer(tmp_path).validate(module, dataloaders=steel_loader(4, seed=1), verbose=False)[0]
    assert out["val/img_auroc_head"] == pytest.approx(float(binary_auroc(img.sigmoid(), has)), abs=1e-6)
    assert out["val/img_auroc_max_cls"] == pytest.approx(
        float(binary_auroc(cls.sigmoid().max(1).values, has)), abs=1e-6
    )
    from steel_defect.inference.predictor import predict_batch

    _, _, image_probs = predict_batch(module.net, data.images[:3])
    assert image_probs.shape == (3,) and torch.allclose(image_probs, img[:3].sigmoid(), atol=1e-6)


def test_test_stage_logs_raw_default_and_tuned_dice(tmp_path):
    """test/dice_tuned is computed with ``tuned_postprocess``, here an image-head gate, per class too."""
    L.seed_everything(4, verbose=False)
    module = tiny_module(net={**NET, "image_head": True})
    data = RandomSteel(6, seed=2)
    module.eval()
    with torch.no_grad():
        img = module(data.images)[2].sigmoid()
    t_img = float(img.median())  # keeps about half the images
    tuned = PostprocessParams.from_dict({**PP_RAW, "t_img": t_img, "img_source": "image_head"})
    module.tuned_postprocess = tuned
    out = cpu_trainer(tmp_path).test(
        module, dataloaders=steel_loader(6, seed=2, batch_size=4), verbose=False
    )[0]
    assert out["test/dice_raw"] == pytest.approx(
        _expected_dice(module, data, PostprocessParams.disabled()), abs=1e-6
    )
    assert out["test/dice_default"] == pytest.approx(_expected_dice(module, data, module.pp_params), abs=1e-6)
    assert out["test/dice_tuned"] == pytest.approx(_expected_dice(module, data, tuned), abs=1e-6)
    assert out["test/dice_tuned"] != pytest.approx(out["test/dice_raw"])  # the gate changed the masks
    assert {f"test/dice_tuned_{c}" for c in range(1, 5)} <= set(out)


def test_tune_thresholds_callback_hands_its_yaml_to_the_test_stage_and_prints_the_table(tmp_path, caplog):
    import logging

    from steel_defect.postprocess.params import save_thresholds
    from steel_defect.training.callbacks import TuneThresholds

    L.seed_everything(5, verbose=False)
    module = tiny_module(net={**NET, "image_head": True})
    data = RandomSteel(4, seed=3)
    # What the callback wrote at fit end (here by hand): a gate that drops every mask.
    params = PostprocessParams.from_dict({**PP_RAW, "t_cls": [1.0] * 4})
    callback = TuneThresholds()
    callback.path = save_thresholds(params, tmp_path / "thresholds.yaml")
    callback.report = {
        "classes": [{"dice_raw": 0.1, "dice_default": 0.2, "dice_tuned": 0.3} for _ in range(4)],
        "mean": {"dice_raw": 0.1, "dice_default": 0.2, "dice_tuned": 0.3},
    }
    with caplog.at_level(logging.INFO, logger="steel_defect.training.callbacks"):
        out = cpu_trainer(tmp_path, callbacks=[callback]).test(
            module, dataloaders=steel_loader(4, seed=3), verbose=False
        )[0]
    assert module.tuned_postprocess == params
    empty_pairs = float((data.masks.flatten(2).sum(2) == 0).float().mean())
    assert (
        out["test/dice_tuned"] == pytest.approx(empty_pairs, abs=1e-6) == _expected_dice(module, data, params)
    )
    assert out["test/dice_tuned"] != pytest.approx(out["test/dice_default"])
    table = callback.table
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["split", "post-processing", "mean"]
    assert (
        "in-sample: tuned on val" in lines[4] and lines[4].startswith("val   tuned") and "0.3000" in lines[4]
    )
    assert (
        lines[7].startswith("test  tuned")
        and f"{out['test/dice_tuned']:6.4f}" in lines[7]
        and "held-out" in lines[7]
    )
    assert f"{out['test/dice_default']:6.4f}" in lines[6] and str(callback.path) in table
    assert table in caplog.text
    # Tuning disabled (no thresholds written): dice_tuned is absent, not faked, and shown as '-'.
    callback = TuneThresholds(enabled=False)
    out = cpu_trainer(tmp_path, callbacks=[callback]).test(
        module, dataloaders=steel_loader(4, seed=3), verbose=False
    )[0]
    assert module.tuned_postprocess is None and "test/dice_tuned" not in out
    assert callback.table.splitlines()[7].split()[:3] == ["test", "tuned", "-"]


def test_old_checkpoint_without_image_head_key_still_loads_and_tests(fitted, tmp_path):
    module, _, path = fitted
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for net in (ckpt["steel_defect"]["net"], ckpt["hyper_parameters"]["net"]):
        del net["image_head"]  # as written before the key existed
    old = tmp_path / "old.ckpt"
    torch.save(ckpt, old)
    net, meta = load_net_from_checkpoint(old)
    assert not net.image_head and "image_head" not in meta["net"]
    with torch.no_grad():
        assert len(net(torch.rand(1, 3, H, W))) == 2
    rebuilt = SteelDefectModule(**ckpt["hyper_parameters"])
    out = cpu_trainer(tmp_path).test(
        rebuilt, dataloaders=steel_loader(2), ckpt_path=str(old), weights_only=True, verbose=False
    )[0]
    assert "test/dice_default" in out and "test/img_auroc_head" not in out


# ------------------------------------------------------------------------------------------------------
# Differential learning rates (model.optimizer.encoder_lr)
# ------------------------------------------------------------------------------------------------------
def _diff_lr_module(scheduler: dict | None = None, **opt) -> SteelDefectModule:
    optimizer = {"_target_": "torch.optim.AdamW", "lr": 3e-3, "weight_decay": 1e-4, "encoder_lr": 7e-5}
    optimizer.update(opt)
    return tiny_module(optimizer=optimizer, scheduler=scheduler or {"name": "none"})


def test_encoder_lr_gives_two_disjoint_groups_covering_every_parameter():
    module = _diff_lr_module()
    assert module.hparams.optimizer["encoder_lr"] == 7e-5
    optimizer = module.configure_optimizers()["optimizer"]
    groups = optimizer.param_groups
    assert [g["name"] for g in groups] == ["encoder", "decoder_heads"]
    assert [g["lr"] for g in groups] == [7e-5, 3e-3]
    assert [g["weight_decay"] for g in groups] == [1e-4, 1e-4]
    assert "encoder_lr" not in optimizer.defaults
    encoder, rest = ({id(p) for p in g["params"]} for g in groups)
    assert len(encoder) == len(groups[0]["params"]) and len(rest) == len(groups[1]["params"])
    assert not encoder & rest
    assert {id(p) for p in module.parameters() if p.requires_grad} <= encoder | rest
    assert len(encoder) + len(rest) == len(list(module.parameters()))
    assert encoder == {id(p) for p in module.net.model.encoder.parameters()}
    names = {id(p): n for n, p in module.named_parameters()}
    assert all(names[i].startswith("net.model.encoder.") for i in encoder)
    assert not any(names[i].startswith("net.model.encoder.") for i in rest)
    for part in ("decoder", "segmentation_head", "classification_head"):
        assert any(names[i].startswith(f"net.model.{part}.") for i in rest), part


@pytest.mark.parametrize("optimizer", [None, {"_target_": "torch.optim.AdamW", "encoder_lr": None}])
def test_without_encoder_lr_there_is_one_group(optimizer):
    module = tiny_module(optimizer=optimizer, scheduler={"name": "none"})
    groups = module.configure_optimizers()["optimizer"].param_groups
    assert len(groups) == 1 and "name" not in groups[0]
    assert groups[0]["lr"] == (3e-4 if optimizer is None else 1e-3)  # AdamW's own default without `lr`
    assert [id(p) for p in groups[0]["params"]] == [id(p) for p in module.parameters()]


@pytest.mark.parametrize("name", ["cosine", "onecycle"])
def test_schedulers_keep_the_encoder_to_decoder_lr_ratio(name):
    from types import SimpleNamespace

    module = _diff_lr_module(scheduler={"name": name, "warmup_steps": 2})
    module.trainer = SimpleNamespace(estimated_stepping_batches=6)
    config = module.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    seen = []
    for _ in range(6):
        encoder_lr, lr = (g["lr"] for g in optimizer.param_groups)
        assert encoder_lr / lr == pytest.approx(7e-5 / 3e-3), seen
        seen.append(lr)
        optimizer.step()  # no gradients: a no-op, keeps the optimizer-before-scheduler order
        scheduler.step()
    assert len(set(seen)) > 2


def test_fit_with_encoder_lr(tmp_path):
    module = _diff_lr_module(scheduler={"name": "onecycle"})
    before = {n: p.detach().clone() for n, p in module.named_parameters()}
    trainer = cpu_trainer(tmp_path, max_steps=2, limit_val_batches=0)
    trainer.fit(module, steel_loader(4))
    groups = trainer.optimizers[0].param_groups
    assert [g["name"] for g in groups] == ["encoder", "decoder_heads"]
    assert groups[0]["lr"] / groups[1]["lr"] == pytest.approx(7e-5 / 3e-3)
    changed = {n for n, p in module.named_parameters() if not torch.equal(p, before[n])}
    assert any(n.startswith("net.model.encoder.") for n in changed)
    assert any(n.startswith("net.model.decoder.") for n in changed)


@pytest.mark.parametrize("encoder_lr", [0, -1, "x", float("nan"), True])
def test_bad_encoder_lr_names_the_key(encoder_lr):
    with pytest.raises(ValueError, match=r"model\.optimizer\.encoder_lr"):
        _diff_lr_module(encoder_lr=encoder_lr)
