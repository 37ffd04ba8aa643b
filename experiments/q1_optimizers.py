"""Q1: SGD vs SGD with momentum 0.9 vs Adam.

python -m experiments.q1_optimizers [--seeds 3] [--out results] [--quick] [--pool max] ...
"""

if __name__ == "__main__":
    from experiments import interrupt

    interrupt.install()
    from fmnist_jax import entry

    entry.start()

from experiments import q1

if __name__ == "__main__":
    q1.main("q1_optimizers")
