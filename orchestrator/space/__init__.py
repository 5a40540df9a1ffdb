"""The search-space file: its format (schema), validation, and sampling with Optuna."""
