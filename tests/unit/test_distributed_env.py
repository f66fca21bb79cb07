import socket

import pytest

from met2net.distributed.env import (
    LOOPBACK,
    SLURM_PORT_BASE,
    SLURM_PORT_SPAN,
    RankInfo,
    discover,
    expand_nodelist,
    export,
    free_port,
)
from met2net.distributed.orphans import launcher

TORCHRUN = {
    "RANK": "5",
    "WORLD_SIZE": "8",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "4",
    "GROUP_RANK": "1",
    "GROUP_WORLD_SIZE": "2",
    "MASTER_ADDR": "node-a",
    "MASTER_PORT": "29400",
}

DEEPSPEED_LAUNCHER = {
    "RANK": "1",
    "WORLD_SIZE": "2",
    "LOCAL_RANK": "1",
    "LOCAL_SIZE": "2",
    "CROSS_RANK": "0",
    "CROSS_SIZE": "1",
    "MASTER_ADDR": "127.0.0.1",
    "MASTER_PORT": "29500",
}


def slurm_step(procid, ntasks, localid, nodeid, nnodes, nodelist, tasks_per_node, job_id="4242"):
    """What ``srun`` puts in each task's environment (Slurm 22.05)."""
    return {
        "SLURM_JOB_ID": job_id,
        "SLURM_JOBID": job_id,
        "SLURM_STEP_ID": "0",
        "SLURM_STEPID": "0",
        "SLURM_PROCID": str(procid),
        "SLURM_LOCALID": str(localid),
        "SLURM_NODEID": str(nodeid),
        "SLURM_NTASKS": str(ntasks),
        "SLURM_STEP_NUM_TASKS": str(ntasks),
        "SLURM_NNODES": str(nnodes),
        "SLURM_STEP_NUM_NODES": str(nnodes),
        "SLURM_JOB_NODELIST": nodelist,
        "SLURM_NODELIST": nodelist,
        "SLURM_STEP_NODELIST": nodelist,
        "SLURM_TASKS_PER_NODE": tasks_per_node,
        "SLURM_STEP_TASKS_PER_NODE": tasks_per_node,
    }


def slurm_port(job_id):
    return SLURM_PORT_BASE + job_id % SLURM_PORT_SPAN


def test_torchrun():
    assert discover(TORCHRUN) == RankInfo(5, 8, 1, 4, 1, 2, "node-a", 29400, "torchrun")


def test_deepspeed_launcher_names_its_local_size_and_node_rank_differently():
    assert discover(DEEPSPEED_LAUNCHER) == RankInfo(1, 2, 1, 2, 0, 1, LOOPBACK, 29500, "torchrun")


def test_bare_torch_variables_mean_one_node_on_loopback():
    info = discover({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}, default_port=1234)
    assert info == RankInfo(1, 2, 1, 2, 0, 1, LOOPBACK, 1234, "torchrun")


def test_partial_torch_variables_name_the_missing_one():
    with pytest.raises(ValueError, match="LOCAL_RANK is not set"):
        discover({"RANK": "0", "WORLD_SIZE": "2"})


def test_slurm_single_node_two_tasks():
    env = slurm_step(procid=1, ntasks=2, localid=1, nodeid=0, nnodes=1, nodelist="node1", tasks_per_node="2")
    assert discover(env) == RankInfo(1, 2, 1, 2, 0, 1, "node1", slurm_port(4242), "slurm")


def test_slurm_four_nodes_of_four_tasks():
    infos = [
        discover(
            slurm_step(
                procid=r,
                ntasks=16,
                localid=r % 4,
                nodeid=r // 4,
                nnodes=4,
                nodelist="gpu[001-004]",
                tasks_per_node="4(x4)",
            )
        )
        for r in range(16)
    ]
    assert [i.rank for i in infos] == list(range(16))
    assert [i.node_rank for i in infos] == [r // 4 for r in range(16)]
    assert {(i.world_size, i.local_world_size, i.num_nodes, i.master_addr, i.launcher) for i in infos} == {
        (16, 4, 4, "gpu001", "slurm")
    }
    assert len({i.master_port for i in infos}) == 1


def test_slurm_uneven_tasks_per_node_read_from_this_nodes_entry():
    env = slurm_step(procid=8, ntasks=9, localid=0, nodeid=2, nnodes=3, nodelist="n[1-3]", tasks_per_node="4(x2),1")
    info = discover(env)
    assert (info.local_world_size, info.node_rank, info.master_addr) == (1, 2, "n1")


def test_slurm_ntasks_per_node_and_job_wide_variables_suffice():
    env = {
        "SLURM_JOB_ID": "7",
        "SLURM_STEP_ID": "0",
        "SLURM_PROCID": "3",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_NTASKS": "4",
        "SLURM_NTASKS_PER_NODE": "2",
        "SLURM_JOB_NODELIST": "a[08-09]",
    }
    assert discover(env) == RankInfo(3, 4, 1, 2, 1, 2, "a08", slurm_port(7), "slurm")


def test_slurm_step_variables_win_over_the_job_wide_ones():
    env = slurm_step(procid=1, ntasks=4, localid=1, nodeid=0, nnodes=2, nodelist="n[1-2]", tasks_per_node="2(x2)")
    env.update(
        SLURM_STEP_NUM_TASKS="2", SLURM_STEP_NUM_NODES="1", SLURM_STEP_NODELIST="n2", SLURM_STEP_TASKS_PER_NODE="2"
    )
    assert discover(env) == RankInfo(1, 2, 1, 2, 0, 1, "n2", slurm_port(4242), "slurm")


def test_slurm_respects_master_port_and_addr():
    env = slurm_step(procid=0, ntasks=2, localid=0, nodeid=0, nnodes=1, nodelist="node1", tasks_per_node="2")
    assert discover({**env, "MASTER_PORT": "31337"}).master_port == 31337
    assert discover({**env, "MASTER_ADDR": "node1-ib"}).master_addr == "node1-ib"


def test_slurm_port_differs_between_jobs_and_stays_below_the_ephemeral_range():
    ports = set()
    for job_id in range(100_000, 100_050):
        env = slurm_step(0, 1, 0, 0, 1, "node1", "1", job_id=str(job_id))
        ports.add(discover(env).master_port)
    assert len(ports) == 50
    assert all(SLURM_PORT_BASE <= p < 32768 for p in ports)


def test_batch_script_without_srun_runs_alone():
    batch = {
        "SLURM_JOB_ID": "99",
        "SLURM_PROCID": "0",
        "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
        "SLURM_NTASKS": "4",
        "SLURM_NNODES": "2",
        "SLURM_JOB_NODELIST": "n[1-2]",
        "SLURM_TASKS_PER_NODE": "2(x2)",
    }
    assert discover(batch, default_port=4000) == RankInfo(0, 1, 0, 1, 0, 1, LOOPBACK, 4000, "single")


def test_torchrun_inside_srun_wins_over_slurm():
    env = {**slurm_step(0, 2, 0, 0, 2, "n[1-2]", "1(x2)"), **TORCHRUN}
    assert discover(env).launcher == "torchrun"
    assert discover(env).rank == 5


def test_open_mpi_single_node():
    env = {
        "OMPI_COMM_WORLD_RANK": "1",
        "OMPI_COMM_WORLD_SIZE": "2",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
        "OMPI_COMM_WORLD_NODE_RANK": "1",
        "PMIX_RANK": "1",
    }
    assert discover(env, default_port=5555) == RankInfo(1, 2, 1, 2, 0, 1, LOOPBACK, 5555, "mpi")


def test_open_mpi_multi_node_with_master_addr():
    env = {
        "OMPI_COMM_WORLD_RANK": "5",
        "OMPI_COMM_WORLD_SIZE": "8",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
        "MASTER_ADDR": "head",
        "MASTER_PORT": "29600",
    }
    assert discover(env) == RankInfo(5, 8, 1, 4, 1, 2, "head", 29600, "mpi")


def test_mpich_pmi():
    env = {"PMI_RANK": "2", "PMI_SIZE": "4", "MPI_LOCALRANKID": "2", "MPI_LOCALNRANKS": "4"}
    assert discover(env) == RankInfo(2, 4, 2, 4, 0, 1, LOOPBACK, 29500, "mpi")


def test_pmi_without_local_variables_counts_each_rank_alone():
    assert discover({"PMI_RANK": "0", "PMI_SIZE": "1"}) == RankInfo(0, 1, 0, 1, 0, 1, LOOPBACK, 29500, "mpi")
    info = discover({"PMI_RANK": "1", "PMI_SIZE": "2", "MASTER_ADDR": "head"})
    assert (info.local_rank, info.local_world_size, info.node_rank, info.num_nodes) == (0, 1, 1, 2)


@pytest.mark.parametrize(
    "env",
    [
        {
            "OMPI_COMM_WORLD_RANK": "0",
            "OMPI_COMM_WORLD_SIZE": "8",
            "OMPI_COMM_WORLD_LOCAL_RANK": "0",
            "OMPI_COMM_WORLD_LOCAL_SIZE": "4",
        },
        {"PMI_RANK": "0", "PMI_SIZE": "2"},
    ],
)
def test_mpi_across_nodes_without_master_addr_is_refused(env):
    with pytest.raises(ValueError, match="export MASTER_ADDR"):
        discover(env)


def test_srun_with_pmi_agrees_with_slurm_and_keeps_slurm_master():
    env = {**slurm_step(5, 8, 1, 1, 2, "gpu[01-02]", "4(x2)"), "PMI_RANK": "5", "PMI_SIZE": "8"}
    info = discover(env)
    assert (info.launcher, info.rank, info.master_addr) == ("slurm", 5, "gpu01")


def test_mpirun_inside_an_allocation_uses_mpi_numbering_not_its_daemon_step():
    """Open MPI starts its daemons on the other nodes with srun: their ranks inherit that step's variables."""
    daemon_step = slurm_step(procid=0, ntasks=1, localid=0, nodeid=0, nnodes=1, nodelist="n2", tasks_per_node="1")
    env = {
        **daemon_step,
        "OMPI_COMM_WORLD_RANK": "3",
        "OMPI_COMM_WORLD_SIZE": "4",
        "OMPI_COMM_WORLD_LOCAL_RANK": "1",
        "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
        "MASTER_ADDR": "n1",
    }
    assert discover(env) == RankInfo(3, 4, 1, 2, 1, 2, "n1", 29500, "mpi")


def test_single_process():
    assert discover({}) == RankInfo(0, 1, 0, 1, 0, 1, LOOPBACK, 29500, "single")
    assert discover({"MASTER_PORT": "4321"}, default_port=1).master_port == 4321


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, r"RANK=2 must lie in \[0, WORLD_SIZE=2\)"),
        ({"RANK": "x", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK='x' is not an integer"),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "1.5"}, "LOCAL_RANK='1.5' is not an integer"),
        ({"RANK": "0", "WORLD_SIZE": "0", "LOCAL_RANK": "0"}, "WORLD_SIZE=0 must be at least 1"),
        ({"RANK": "-1", "WORLD_SIZE": "2", "LOCAL_RANK": "0"}, "RANK=-1 must lie"),
        (
            {"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "2", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "h"},
            r"LOCAL_RANK=2 must lie in \[0, LOCAL_WORLD_SIZE=2\)",
        ),
        ({"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_PORT": "70000"}, "MASTER_PORT=70000"),
        ({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_PORT": ""}, "MASTER_PORT='' is not an integer"),
        ({**slurm_step(4, 4, 0, 0, 1, "n1", "4")}, "SLURM_PROCID=4 must lie in .*SLURM_STEP_NUM_TASKS=4"),
        ({**slurm_step(0, 4, 0, 0, 1, "n1", "4"), "SLURM_LOCALID": "four"}, "SLURM_LOCALID='four'"),
        ({**slurm_step(0, 4, 0, 0, 1, "n1", "4"), "SLURM_JOB_ID": "12_3"}, "SLURM_JOB_ID='12_3'"),
        ({**slurm_step(0, 4, 0, 0, 1, "n1", "4"), "SLURM_STEP_TASKS_PER_NODE": "4x"}, "SLURM_STEP_TASKS_PER_NODE='4x'"),
        ({**slurm_step(0, 4, 0, 0, 2, "n[1-2]", "4")}, "SLURM_STEP_TASKS_PER_NODE='4' lists 1 nodes"),
        ({**slurm_step(0, 4, 0, 1, 1, "n1", "4")}, r"SLURM_NODEID=1 must lie in \[0, SLURM_STEP_NUM_NODES=1\)"),
        ({**slurm_step(0, 4, 0, 0, 1, "n[1-", "4")}, r"unbalanced '\[' in node list 'n\[1-'"),
        (
            {
                "OMPI_COMM_WORLD_RANK": "3",
                "OMPI_COMM_WORLD_SIZE": "2",
                "OMPI_COMM_WORLD_LOCAL_RANK": "1",
                "OMPI_COMM_WORLD_LOCAL_SIZE": "2",
            },
            "OMPI_COMM_WORLD_RANK=3 must lie",
        ),
        ({"PMI_RANK": "0", "PMI_SIZE": "2", "MPI_LOCALRANKID": "0"}, "MPI_LOCALNRANKS is not set"),
    ],
)
def test_invalid_values_name_the_variable(env, message):
    with pytest.raises(ValueError, match=message):
        discover(env)


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("gpu[001-004,007],login1", ["gpu001", "gpu002", "gpu003", "gpu004", "gpu007", "login1"]),
        ("rack[1-2]-node[01-02]", ["rack1-node01", "rack1-node02", "rack2-node01", "rack2-node02"]),
        ("node1", ["node1"]),
        ("a,b,c", ["a", "b", "c"]),
        ("n[8-10]", ["n8", "n9", "n10"]),
        ("n[098-101]", ["n098", "n099", "n100", "n101"]),
        ("n[3]", ["n3"]),
        ("x[1,3],y[2-3]z", ["x1", "x3", "y2z", "y3z"]),
        ("", []),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize(
    ("nodelist", "message"),
    [
        ("gpu[1-2", "unbalanced '\\['"),
        ("gpu1-2]", "unbalanced '\\]'"),
        ("gpu[[1-2]]", "nested"),
        ("gpu[5-3]", "runs backwards"),
        ("gpu[a-b]", "bad range 'a-b'"),
        ("gpu[1-]", "bad range '1-'"),
        ("gpu[]", "bad range ''"),
        ("gpu[1,,2]", "bad range ''"),
        ("a,,b", "empty host name"),
    ],
)
def test_expand_nodelist_errors_name_the_list(nodelist, message):
    with pytest.raises(ValueError, match=message) as error:
        expand_nodelist(nodelist)
    assert repr(nodelist) in str(error.value)


def test_export_writes_the_six_variables_and_round_trips():
    info = RankInfo(3, 8, 1, 4, 0, 2, "gpu001", 21234, "slurm")
    env = {"UNRELATED": "kept"}
    export(info, env)
    assert env == {
        "UNRELATED": "kept",
        "RANK": "3",
        "WORLD_SIZE": "8",
        "LOCAL_RANK": "1",
        "LOCAL_WORLD_SIZE": "4",
        "MASTER_ADDR": "gpu001",
        "MASTER_PORT": "21234",
    }
    again = discover(env)
    assert (again.rank, again.world_size, again.local_rank, again.local_world_size) == (3, 8, 1, 4)
    assert (again.master_addr, again.master_port) == ("gpu001", 21234)


def test_free_port_is_bindable():
    port = free_port()
    assert 0 < port < 65536
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, port))


@pytest.mark.parametrize(
    ("env", "parent"),
    [
        ({"TORCHELASTIC_RUN_ID": "none", "RANK": "1"}, "torchrun"),
        ({"OMPI_COMM_WORLD_RANK": "1", "PMIX_RANK": "1"}, "mpirun"),
        ({"SLURM_STEP_ID": "0", "SLURM_PROCID": "1", "PMIX_RANK": "1"}, "srun"),  # srun --mpi=pmix: not mpirun
        ({"SLURM_JOB_ID": "7", "SLURM_PROCID": "0"}, None),  # the batch script itself, not a step's task
        ({"RANK": "0"}, None),
    ],
)
def test_the_launcher_whose_death_stops_a_rank(env, parent):
    assert launcher(env) == parent
