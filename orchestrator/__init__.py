"""orchestrator: hyperparameter search for GANs with Ray Tune, Optuna, ASHA on FID and MLflow."""

__version__ = "0.1.0"
