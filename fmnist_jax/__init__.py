"""fmnist-jax: a pure-JAX, functional re-implementation of a 5-class Fashion-MNIST study."""

__version__ = "0.1.0"
