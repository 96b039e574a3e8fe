"""steel-defect: one network for Severstal steel surface-defect segmentation and classification."""

__version__ = "0.1.0"

NUM_CLASSES = 4
#: Severstal's class names (mask-channel order); other data sets name theirs in ``data.classes``.
SEVERSTAL_CLASSES: tuple[str, ...] = tuple(str(c + 1) for c in range(NUM_CLASSES))
#: Kaggle Severstal image size (height, width). A default, never an assumption: every function takes a shape.
DEFAULT_SHAPE: tuple[int, int] = (256, 1600)
