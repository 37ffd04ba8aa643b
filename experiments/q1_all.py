"""Q1: the augmentation, epochs and optimizer sweeps planned together, as the study runs them.

    python -m experiments.q1_all [--seeds 3] [--out results] [--quick] [--pool max] ...

Same folders as the three `q1_<sweep>` commands, but every configuration is trained once: the
epochs sweep's 10-epoch run writes its shorter rows and the `online`/`adam` rows, and the tuned
run writes the augmentation sweep's `expand` row (its first 5 epochs). With --workers (auto: one
per core on a CPU-only machine) the configurations to train are shared out to worker processes.
"""

if __name__ == "__main__":
    from experiments import interrupt

    interrupt.install()

from experiments import q1

if __name__ == "__main__":
    q1.main_all()
