"""The GAN itself, in plain PyTorch without Ray: models, losses, the training step, where it computes
(device, precision, memory format) and the checkpoint format. The trial runner, which also scores
with ``metrics/``, stands above both (``orchestrator/trial.py``)."""
