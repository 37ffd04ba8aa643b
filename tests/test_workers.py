"""experiments.workers' pure parts: how many workers on which cores, how work is shared out.
(Training through workers, bit for bit against one process, and a failing worker: test_q1.)"""

from __future__ import annotations

import pytest

from experiments import common, workers


def sets(requested, n_jobs, cpus=(0, 1), backend="cpu", n_devices=1, small=False):
    return workers.cpu_sets(requested, n_jobs, cpus=cpus, backend=backend, n_devices=n_devices,
                            small=small)


def test_auto_uses_one_worker_per_core_only_where_it_pays():
    assert sets("auto", 5) == [(0,), (1,)]
    assert sets("auto", 5, cpus=(2, 3, 5)) == [(2,), (3,), (5,)]
    assert sets("auto", 2, cpus=range(5)) == [(0, 1, 2), (3, 4)]  # fewer jobs than cores
    assert sets("auto", 1) == []  # one configuration to train
    assert sets("auto", 5, small=True) == []  # --quick / --limit
    assert sets("auto", 5, cpus=(0,)) == []
    assert sets("auto", 5, backend="gpu") == []
    assert sets("auto", 5, n_devices=2) == []  # --xla_force_host_platform_device_count


def test_a_number_of_workers_is_honoured_on_the_cpu():
    assert sets(2, 5, small=True) == [(0,), (1,)]
    assert sets(3, 2) == [(0,), (1,)]  # capped at the configurations to train
    assert sets(3, 5) == [(), (), ()]  # more workers than cores: unpinned, sharing them
    assert sets(1, 5) == []
    with pytest.raises(common.UsageError, match="--workers 2 .* on gpu"):
        sets(2, 5, backend="gpu")
    assert sets(1, 5, backend="gpu") == []


def test_cost_counts_each_epoch_on_its_own_training_set():
    """What orders the configurations (longest first): epochs x their set's size."""
    from experiments import q1

    args = common.parser("test").parse_args([])
    specs = {s.name: s for s in [*q1.augmentation_specs(args), *q1.epochs_specs(args),
                                 *q1.optimizer_specs(args)]}
    assert workers.cost(specs["none"]) == workers.cost(specs["online"]) == 5
    assert workers.cost(specs["expand"]) == 15  # the expanded set is 3x the originals
    assert workers.cost(specs["epochs_10"]) == 10
    assert workers.cost(specs["tuned"]) == 5 * 3 + 2  # 5 on the expanded set, 2 on the originals
