"""A learning-curve table's format, for the benchmark that writes it (``learning_curves.py``) and
the trial that serves it (``replay_trial.py``): one row per evaluation, these columns, then every
metric the registry computed. Imports nothing, so neither side pulls in the other's libraries."""

ID_COLUMNS = ("run", "config_id", "seed", "eval", "step", "train_seconds", "eval_seconds", "seconds",
              "ended", "config")
COMPLETED = "completed"  # the ``ended`` of a run that ran its whole budget; else the failure's name
