"""``data=synthetic``: the data module that generates the project's synthetic set into ``root`` on first use.

The only data module that writes into its ``root``, and only through :func:`generate_dataset`, which refuses
any folder it did not make (anything without a ``synthetic.json`` stamp listing every file) before one byte
is touched. Real layouts (``data=severstal``, ``data=folder``) use :class:`SteelDataModule`, which has no
generation code path at all.
"""

from __future__ import annotations

import logging
from typing import Any

from steel_defect import SEVERSTAL_CLASSES
from steel_defect.config import to_plain
from steel_defect.data.datamodule import SteelDataModule
from steel_defect.synthetic.dataset import GENERATOR_VERSION, generate_dataset, read_stamp

__all__ = ["SyntheticDataModule"]

log = logging.getLogger(__name__)

#: The generator arguments a stamp must match for an existing set to be reused as it is.
_STAMP_KEYS = ("n_train", "n_test", "seed", "shape", "class_mix")


class SyntheticDataModule(SteelDataModule):
    """:class:`SteelDataModule` over a synthetic set that ``prepare_data`` generates into ``root``.

    ``synthetic``: keyword arguments of :func:`steel_defect.synthetic.generate_dataset` (``shape`` defaults to
    ``shape``). A set in ``root`` made by this generator with other arguments is regenerated; a folder that
    holds anything the generator did not write is refused, naming it, and left exactly as it was.
    """

    def __init__(self, *args: Any, synthetic: dict | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not isinstance(to_plain(synthetic), dict):
            raise ValueError(
                f"data.synthetic must be a mapping of generator arguments (n_train, n_test, seed, ...), got "
                f"{synthetic!r}; for real data use data=severstal or data=folder"
            )
        if (
            self.cfg.layout.layout != "kaggle"
            or self.shape is None
            or self.classes != list(SEVERSTAL_CLASSES)
        ):
            raise ValueError(
                "data.synthetic generates Severstal's kaggle layout with its four classes: use data=folder "
                "or data=severstal for other layouts or classes"
            )
        self.synthetic: dict[str, Any] = to_plain(synthetic)

    def prepare_data(self) -> None:
        """Generate the set unless ``root`` already holds one made with these arguments."""
        kwargs = {"shape": list(self.shape), **self.synthetic}
        stamp = read_stamp(self.root)
        wanted = {"generator_version": GENERATOR_VERSION, "class_mix": "real"}
        wanted.update({k: kwargs[k] for k in _STAMP_KEYS if k in kwargs})
        if self.csv_path.exists() and stamp is not None:
            if all(stamp.get(k) == v for k, v in wanted.items()):
                return
            log.warning(
                "synthetic data set in %s was made by another generator version or with other arguments "
                "(%s, wanted %s): regenerating it",
                self.root,
                {k: stamp.get(k) for k in wanted},
                wanted,
            )
        else:
            log.info("generating a synthetic data set in %s (%s)", self.root, kwargs)
        # refuses (before writing) a root holding anything it did not make, stamped or not
        generate_dataset(self.root, overwrite=True, **kwargs)
