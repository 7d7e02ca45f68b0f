"""Datasets: MNIST (the embedded 5,000 digits, the official IDX files), Fashion-MNIST, scikit-learn's digits
(``datasets.py``); where the official MNIST test set is, and the main job's data (``test_set.py``)."""
