"""Everything MLflow: the store, the search's parent run and its trial runs, reading them back, and
the logged models. Imports nothing here, so ``import orchestrator.tracking.store`` stays cheap."""
