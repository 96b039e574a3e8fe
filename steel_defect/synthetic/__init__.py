"""Synthetic Severstal-like steel images with labels, in Kaggle's layout (generator v2).

* :mod:`.render`: one image and its masks (:func:`render_sample`);
* :mod:`.params`: the parameters it draws from, derived from real Severstal statistics (``params.json``);
* :mod:`.dataset`: a whole data set on disk (:func:`generate_dataset`, ``python -m steel_defect.synthetic``).
"""

from steel_defect.synthetic.dataset import format_summary, generate_dataset, image_ids, main
from steel_defect.synthetic.render import render_sample

__all__ = ["format_summary", "generate_dataset", "image_ids", "main", "render_sample"]
