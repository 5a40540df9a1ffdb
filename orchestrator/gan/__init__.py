"""The GAN itself, in plain PyTorch without Ray: models, losses, the training step, where it computes
(device, precision, memory format) and the trial runner that trains, evaluates and checkpoints."""
