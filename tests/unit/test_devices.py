"""Device selection for every GPU layout a launcher can hand a task, with fake environments (no GPU needed).

Each case is the environment one task of a 4-GPU node gets, put through rank discovery (``env.discover``) and then
``select_device`` with the number of devices CUDA would show that task, the way ``setup.bind_device`` chains them.
"""

from __future__ import annotations

import pytest
import torch

from met2net.compat.deepspeed_internals import point_local_rank_at
from met2net.distributed.devices import DeviceBindingError, DeviceChoice, duplicate_gpus, select_device
from met2net.distributed.env import discover
from met2net.distributed.setup import bind_device
from tests.unit.test_distributed_env import TORCHRUN, slurm_step

NODE_GPUS = "0,1,2,3"


def srun_task(localid: int, visible: str | None, **extra: str) -> dict[str, str]:
    """Task ``localid`` of a one-node, 4-task ``srun`` step on a 4-GPU node, seeing ``visible``."""
    env = slurm_step(localid, 4, localid, 0, 1, "gpu001", "4")
    env.update(SLURM_STEP_GPUS=NODE_GPUS, SLURM_JOB_GPUS=NODE_GPUS, **extra)
    if visible is not None:
        env["CUDA_VISIBLE_DEVICES"] = visible
    return env


def choose(env: dict[str, str], num_visible: int) -> DeviceChoice:
    info = discover(env)
    return select_device(num_visible, info.local_rank, info.local_world_size, env)


def test_a_cpu_run_picks_the_cpu():
    assert choose({}, 0) == DeviceChoice("cpu", None, "cpu")
    assert choose(srun_task(3, None), 0).name == "cpu"  # CPU torch on a GPU node's task: still the CPU


def test_slurm_every_task_sees_every_gpu_of_its_node():
    """--ntasks-per-node=4 --gpus-per-node=4, no --gpu-bind: all four see 0-3 and take their local rank."""
    assert [choose(srun_task(r, NODE_GPUS), 4).name for r in range(4)] == ["cuda:0", "cuda:1", "cuda:2", "cuda:3"]
    assert choose(srun_task(3, NODE_GPUS), 4).layout == "node"


@pytest.mark.parametrize(
    "flags, extra",
    [
        ("--gpus-per-task=1", {"SLURM_GPUS_PER_TASK": "1"}),
        ("--gpu-bind=single:1", {}),
        ("--gpu-bind=closest, one GPU per socket", {}),
        ("CUDA_VISIBLE_DEVICES set per task by the site's prolog", {}),
    ],
)
def test_slurm_one_gpu_per_task_uses_cuda_0_whatever_the_local_rank(flags, extra):
    """Local rank 3 sees one device, its own GPU 3, as index 0: cuda:3 would be 'invalid device ordinal'."""
    choices = [choose(srun_task(r, str(r), **extra), 1) for r in range(4)]
    assert [c.name for c in choices] == ["cuda:0"] * 4, flags
    assert {c.layout for c in choices} == {"task"}


def test_slurm_closest_binding_with_two_gpus_per_task_is_refused_with_the_fix():
    """--gpu-bind=closest on a two-socket node: each task sees its socket's two GPUs, four tasks share a node."""
    env = srun_task(3, "2,3")
    with pytest.raises(DeviceBindingError) as caught:
        choose(env, 2)
    message = str(caught.value)
    for expected in (
        "sees 2 GPUs",
        "CUDA_VISIBLE_DEVICES=2,3",
        "SLURM_STEP_GPUS=0,1,2,3",
        "runs 4 ranks",
        "local rank 3, from SLURM_LOCALID",
        "--gpus-per-task=1",
        "--gpu-bind=single:1",
        "--ntasks-per-node=4 --gpus-per-node=4",
        "docs/cluster.md",
    ):
        assert expected in message


def test_more_gpus_than_ranks_on_a_node_is_refused():
    """8 GPUs visible, 4 ranks: cuda:<local rank> works but half the node idles, and a site that meant to bind
    two GPUs per task gets ranks on GPUs it did not give them; refused with the same instructions."""
    with pytest.raises(DeviceBindingError, match="sees 8 GPUs .* runs 4 ranks"):
        choose(srun_task(0, "0,1,2,3,4,5,6,7"), 8)


def test_torchrun_inside_a_job_step():
    """srun --ntasks-per-node=1 torchrun --nproc_per_node=4: LOCAL_RANK wins over SLURM_LOCALID (0)."""
    env = {**slurm_step(1, 2, 0, 1, 2, "gpu[001-002]", "1(x2)"), **TORCHRUN, "CUDA_VISIBLE_DEVICES": NODE_GPUS}
    assert choose(env, 4) == DeviceChoice("cuda", 1, "node")
    with pytest.raises(DeviceBindingError, match=r"from LOCAL_RANK\)"):
        choose({**env, "CUDA_VISIBLE_DEVICES": "0,1"}, 2)


def test_open_mpi_with_and_without_device_binding():
    env = {
        "OMPI_COMM_WORLD_RANK": "6",
        "OMPI_COMM_WORLD_SIZE": "8",
        "OMPI_COMM_WORLD_LOCAL_RANK": "2",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
        "MASTER_ADDR": "gpu001",
    }
    assert choose(env, 4).name == "cuda:2"  # every rank sees the node's GPUs
    assert choose({**env, "CUDA_VISIBLE_DEVICES": "2"}, 1).name == "cuda:0"  # a binding wrapper per rank
    with pytest.raises(DeviceBindingError, match="from OMPI_COMM_WORLD_LOCAL_RANK"):
        choose(env, 3)


def test_a_lone_rank_takes_the_first_of_several_gpus_and_says_the_rest_idle():
    choice = choose({}, 4)  # `met2net train` on a 4-GPU workstation
    assert (choice.name, choice.layout) == ("cuda:0", "lone-rank")
    assert "other 3 stay idle" in choice.note
    one_task_per_node = slurm_step(1, 2, 0, 1, 2, "gpu[001-002]", "1(x2)")
    assert choose({**one_task_per_node, "CUDA_VISIBLE_DEVICES": NODE_GPUS}, 4).name == "cuda:0"


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="0 ≤ local rank < local world size"):
        select_device(1, 4, 4, {})


def test_two_ranks_on_one_physical_gpu_are_named():
    """One GPU per task where the site gave every task the same GPU: each sees one device, so each picks cuda:0 and
    only the ranks' reports, compared after the process group forms, can tell."""
    ranks = [
        {"rank": 0, "host": "gpu001", "uuid": "GPU-a"},
        {"rank": 1, "host": "gpu001", "uuid": "GPU-a"},
        {"rank": 2, "host": "gpu002", "uuid": "GPU-a"},  # another host: another GPU, whatever its id says
        {"rank": 3, "host": "gpu002", "uuid": "GPU-b"},
    ]
    assert duplicate_gpus(ranks) == "ranks 0, 1 share GPU GPU-a on gpu001"
    assert duplicate_gpus(ranks[1:]) is None
    assert duplicate_gpus([{"rank": 0, "host": "h", "uuid": None}, {"rank": 1, "host": "h", "uuid": None}]) is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU path")
def test_bind_device_on_a_machine_without_a_gpu_picks_the_cpu():
    info = discover(srun_task(3, NODE_GPUS))  # a GPU job's environment, but this torch sees no GPU
    assert bind_device(info, srun_task(3, NODE_GPUS)) == DeviceChoice("cpu", None, "cpu")


def test_deepspeed_is_pointed_at_the_ordinal_not_the_local_rank():
    """DeepSpeed builds cuda:<LOCAL_RANK> in its engine, process group and ZeRO code, and asserts LOCAL_RANK equals
    Open MPI's local rank: with one GPU per task both must say 0."""
    env = {"LOCAL_RANK": "3", "OMPI_COMM_WORLD_LOCAL_RANK": "3", "SLURM_LOCALID": "3"}
    point_local_rank_at(0, env)
    assert env == {"LOCAL_RANK": "0", "OMPI_COMM_WORLD_LOCAL_RANK": "0", "SLURM_LOCALID": "3"}
    torchrun = {"LOCAL_RANK": "1"}
    point_local_rank_at(1, torchrun)
    assert torchrun == {"LOCAL_RANK": "1"}
