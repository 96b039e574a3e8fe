"""steel-defect: one network for Severstal steel surface-defect segmentation and classification."""

__version__ = "0.1.0"

NUM_CLASSES = 4
#: Kaggle Severstal image size (height, width). A default, never an assumption: every function takes a shape.
DEFAULT_SHAPE: tuple[int, int] = (256, 1600)
