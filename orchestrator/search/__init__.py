"""The search driver: its plan (every check, Ray-free), the runner, the Tune trainable, ASHA that
survives ``--resume``, the contact-sheet callback, the one-driver lock and the summary.
``python -m orchestrator.search`` is ``__main__.py``."""
