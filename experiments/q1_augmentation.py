"""Q1: augmentation none vs expand vs online; then, beyond the original, the tuned row (which
continues the expand row) in <out>/q1_tuned/.

    python -m experiments.q1_augmentation [--seeds 3] [--out results] [--quick] [--pool max] ...
"""

if __name__ == "__main__":
    from experiments import interrupt

    interrupt.install()
    from fmnist_jax import entry

    entry.start()

from experiments import q1

if __name__ == "__main__":
    q1.main("q1_augmentation")
