"""Re-export shim, kept for one release: ``python -m steel_defect.serve`` runs
``python -m steel_defect.deploy.serve`` (the same arguments)."""

import sys

from steel_defect.deploy.serve.__main__ import main

if __name__ == "__main__":
    sys.exit(main())
