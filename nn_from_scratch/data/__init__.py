"""Datasets: MNIST (the embedded 5,000 digits, the official IDX files), Fashion-MNIST, scikit-learn's digits."""
