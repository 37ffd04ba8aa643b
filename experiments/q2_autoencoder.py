"""Question 2: denoising autoencoder pretraining, encoder fine-tuning, and its sweeps.

python -m experiments.q2_autoencoder [--sweep lr|arch|epochs|pretraining|all] [--seeds 3]
    [--stage pretrain|finetune|both] [--encoder CHECKPOINT] [--freeze-encoder] [--quick] ...
"""

if __name__ == "__main__":
    from experiments import interrupt

    interrupt.install()
    from fmnist_jax import entry

    entry.start()

from experiments import q2

if __name__ == "__main__":
    q2.main()
