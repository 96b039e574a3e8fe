"""Experiment loggers of conf/logger/: composed as `python train.py logger=NAME` would, and a tiny training
writes its run where the config says (MLflow: a local store under the logs folder; W&B: offline, under the
run folder). The training tests skip when the optional package (extras ``mlflow`` / ``wandb``) is absent."""

from __future__ import annotations

import time

import pytest

from tests.helpers import TINY, compose_train

#: a tiny training: 2 steps and one validation batch, no test pass
TINY_FIT = [
    "model=tiny",
    *TINY,
    "data.synthetic.n_train=8",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=1",
    "test=false",
]


def test_every_logger_config_composes(tmp_path):
    from hydra.utils import get_class

    expected = {
        "csv": "CSVLogger",
        "tensorboard": "TensorBoardLogger",
        "mlflow": "MLFlowLogger",
        "wandb": "WandbLogger",
    }
    for name, cls in expected.items():
        cfg = compose_train([f"logger={name}"], tmp_path)
        assert list(cfg.logger) == [name]
        assert get_class(cfg.logger[name]._target_).__name__ == cls
    assert compose_train(["logger=none"], tmp_path).logger in (None, {})


def test_mlflow_config_defaults_to_a_local_store_named_after_the_task(tmp_path):
    cfg = compose_train(["logger=mlflow"], tmp_path)
    ml = cfg.logger.mlflow
    assert ml.experiment_name == cfg.task_name == "train"
    assert ml.tracking_uri == f"sqlite:///{tmp_path / 'logs' / 'mlruns' / 'mlflow.db'}"
    assert ml.artifact_location == str(tmp_path / "logs" / "mlruns" / "artifacts")
    cfg = compose_train(["logger=mlflow", "logger.mlflow.tracking_uri=http://mlflow.local:5000"], tmp_path)
    assert cfg.logger.mlflow.tracking_uri == "http://mlflow.local:5000"


def test_wandb_config_is_offline_under_the_run_folder(tmp_path):
    cfg = compose_train(["logger=wandb"], tmp_path)
    wb = cfg.logger.wandb
    assert wb.offline is True and wb.save_dir == str(tmp_path / "run") and wb.project == "steel-defect"
    cfg = compose_train(["logger=wandb", "logger.wandb.offline=false", "logger.wandb.project=p"], tmp_path)
    assert cfg.logger.wandb.offline is False and cfg.logger.wandb.project == "p"


@pytest.mark.slow
def test_mlflow_logger_records_the_run_of_a_tiny_training(tmp_path):
    pytest.importorskip("mlflow", reason="mlflow is not installed (pip install -e '.[mlflow]')")
    from mlflow.tracking import MlflowClient

    from train import train

    cfg = compose_train([*TINY_FIT, "logger=mlflow"], tmp_path)
    train(cfg)
    store = tmp_path / "logs" / "mlruns" / "mlflow.db"
    assert store.is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{store}")
    experiment = client.get_experiment_by_name("train")
    assert experiment is not None
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.status == "FINISHED"
    assert {"train/loss_step", "train/loss_epoch", "val/dice"} <= set(run.data.metrics)
    assert len(client.get_metric_history(run.info.run_id, "train/loss_step")) == 2  # one per step
    assert run.data.params  # the hyperparameters


@pytest.mark.slow
def test_wandb_logger_writes_an_offline_run_of_a_tiny_training(tmp_path, monkeypatch):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install -e '.[wandb]')")
    import wandb

    from train import train

    for var in ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR"):  # nothing written under $HOME
        monkeypatch.setenv(var, str(tmp_path / "wandb-home"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = compose_train([*TINY_FIT, "logger=wandb"], tmp_path)
    try:
        train(cfg)
    finally:
        wandb.finish()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, runs
    (log,) = runs[0].glob("run-*.wandb")
    # wandb's service process may still be writing the log when finish() returns: give it a few seconds
    deadline = time.monotonic() + 30
    while b"val/dice" not in log.read_bytes() and time.monotonic() < deadline:
        time.sleep(0.5)
    data = log.read_bytes()
    assert data.startswith(b":W&B") and b"train/loss_step" in data and b"val/dice" in data
