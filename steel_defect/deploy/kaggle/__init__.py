"""The offline Kaggle bundle: :mod:`.bundle` (``python -m steel_defect.deploy.kaggle bundle ...``), the kernel
it writes (:mod:`.kernel_template`, read as text) and the wheels it packs (:mod:`.wheels`)."""
