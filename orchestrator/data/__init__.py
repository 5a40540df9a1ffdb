"""Datasets: the registry of names, where each one's files are, the keyed uint8 cache, and the
built-in ``shapes`` dataset."""
