"""The search: its plan (every check, Ray-free), the space file and its schema, the Tune trainable,
the runner, the search's pictures, and ``tracking/``: everything MLflow.
``python -m orchestrator.search`` is ``__main__.py``."""
