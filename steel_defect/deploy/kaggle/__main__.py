"""``python -m steel_defect.deploy.kaggle bundle ckpt=PATH out=DIR [key=value ...]``."""

import sys

from steel_defect.deploy.kaggle.bundle import main

if __name__ == "__main__":
    sys.exit(main())
