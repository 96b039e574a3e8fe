"""Lightning + Hydra glue for ``train.py``: callbacks (threshold tuning, EMA, resumable seeds) and the config
instantiation helpers. The training run itself (one fit, or a fold ensemble tuned out of fold) is the task
:mod:`steel_defect.tasks.train`: it runs ``task=tune_oof`` after the folds, so it sits in the task layer."""
