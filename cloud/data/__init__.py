"""Datasets for the benchmark cloud_models: Fashion-MNIST, corruptions and the CIFAR-10-C file layout."""
