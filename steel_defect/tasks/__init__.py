"""The entry points' tasks, one module each: ``predict.py``'s (:mod:`.dispatch` runs them by ``task``) and
``train.py``'s (:mod:`.train`).

* :mod:`.config`: ``PredictConfig`` (conf/predict.yaml validated) and ``PseudoRule``
* :mod:`.common`: what several tasks share (images folder, predictor, labelled data for tuning)
* :mod:`.predict` (predict, evaluate), :mod:`.tune` (tune, tune_oof), :mod:`.pseudo`, :mod:`.export`
  (export, quantize), :mod:`.distributed` (``trainer=ddp``), :mod:`.outputs` (output-path safety)
* :mod:`.train`: ``train.py``'s run (one fit, or ``folds=K``)

``run`` and ``TASKS`` are importable from here (lazily, so that importing one task module does not import
all of them).
"""

from steel_defect._lazy import lazy_getattr

__getattr__ = lazy_getattr(__name__, {"run": "dispatch", "TASKS": "dispatch"}, globals())
