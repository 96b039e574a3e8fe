"""Re-export shim, kept for one release: the inspection service moved to :mod:`steel_defect.deploy.serve`.
``python -m steel_defect.serve ...`` still works (this package's ``__main__``); the new form is
``python -m steel_defect.deploy.serve``. Import from the new package; this one will be removed."""
