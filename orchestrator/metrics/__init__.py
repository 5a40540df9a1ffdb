"""Evaluation metrics.

``inception``: the standard FID Inception network behind the ``FeatureExtractor`` interface.
``fid``: the Fréchet distance (pure math), streaming feature statistics, generated-image features.
``reference``: the real side, reference statistics and features computed once per dataset and cached.
``inception_score``: IS from the same Inception pass's logits, when the classifier head is loaded.

Nothing is imported here, so ``import orchestrator.metrics.fid`` stays cheap and free of side effects.
"""
