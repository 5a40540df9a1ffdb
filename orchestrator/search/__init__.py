"""The search: its plan (every check, Ray-free), the space file and its schema, the Tune trainable,
the runner, MLflow tracking and the search's pictures. ``python -m orchestrator.search`` is
``__main__.py``."""
