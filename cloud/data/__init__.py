"""Datasets for the benchmark world: Fashion-MNIST, corruptions and the CIFAR-10-C file layout."""
