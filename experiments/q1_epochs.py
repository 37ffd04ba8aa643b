"""Q1: 3, 5, 8 and 10 epochs, with the noise of the validation curves measured.

python -m experiments.q1_epochs [--seeds 3] [--out results] [--quick] [--pool max] ...
"""

if __name__ == "__main__":
    from experiments import interrupt

    interrupt.install()
    from fmnist_jax import entry

    entry.start()

from experiments import q1

if __name__ == "__main__":
    q1.main("q1_epochs")
