"""Evaluation metrics.

``inception``: the standard FID Inception network behind the ``FeatureExtractor`` interface.
``frechet``: the Fréchet distance (pure math), streaming feature statistics, generated-image features.
``reference``: the real side, reference statistics and features computed once per dataset and cached.
``inception_score``: IS from the same Inception pass's logits, when the classifier head is loaded.
``diversity``: KID, precision/recall, density/coverage, NDB and the feature spread, from the same features.
``health``: the failure detectors, read from a trial's history of these metrics.

Nothing is imported here, so ``import orchestrator.metrics.frechet`` stays cheap and free of side effects.
"""
