"""PPO on two 'machines': two accelerate launches on 127.0.0.1 that train one policy together, each with its own disk.

Also checks the cluster launch files: configs/accelerate/multi_node.yaml and configs/slurm/ppo_multinode.sbatch.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.conftest import REPO
from tests.test_ppo import ppo_args, ppo_run  # noqa: F401  (ppo_run is a fixture)

SBATCH = REPO / "configs" / "slurm" / "ppo_multinode.sbatch"
MULTI_NODE = REPO / "configs" / "accelerate" / "multi_node.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_machine(rank: int, runs_dir: Path, port: int, log: Path) -> subprocess.Popen:
    # ddp.yaml (MULTI_GPU) makes accelerate start torchrun with --nnodes/--node_rank and a static rendezvous;
    # ACCELERATE_USE_CPU turns the processes it starts into MULTI_CPU on gloo. Without it, on a machine with no GPU
    # each process silently trains alone (1 process, no gradient sync); `--cpu` alone starts no torchrun at all.
    cmd = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(REPO / "configs" / "accelerate" / "ddp.yaml"),
        "--num_machines",
        "2",
        "--num_processes",
        "2",
        "--machine_rank",
        str(rank),
        "--main_process_ip",
        "127.0.0.1",
        "--main_process_port",
        str(port),
        "-m",
        "ppo.train",
        *ppo_args(runs_dir, "--save_on_each_node", "true"),
    ]
    env = {**os.environ, "PYTHONPATH": str(REPO), "ACCELERATE_USE_CPU": "true", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


@pytest.mark.slow
def test_two_machines_train_one_policy_and_each_saves_it(ppo_run, tmp_path):  # noqa: F811
    # Machines without a shared disk: each has its own copy of the run's inputs, and writes its own outputs.
    machines = [shutil.copytree(ppo_run, tmp_path / f"machine{rank}") for rank in (0, 1)]  # with its prompts
    port = free_port()
    logs = [tmp_path / f"machine{rank}.log" for rank in (0, 1)]
    procs = [launch_machine(rank, machines[rank], port, logs[rank]) for rank in (0, 1)]
    try:
        for proc in procs:
            proc.wait(timeout=240)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    for rank, proc in enumerate(procs):
        assert proc.returncode == 0, f"machine {rank}:\n" + logs[rank].read_text()[-5000:]

    saved = [load_file(m / "t" / "ppo" / "model" / "model.safetensors") for m in machines]
    sft = load_file(ppo_run / "t" / "sft" / "model" / "model.safetensors")
    assert saved[0].keys() == saved[1].keys()
    for name in saved[0]:
        assert torch.equal(saved[0][name], saved[1][name]), name  # one policy, synchronised across the machines
    assert any(not torch.equal(saved[0][name], sft[name]) for name in saved[0].keys() & sft.keys())  # it trained
    # Each machine also wrote the snapshot of step 1, the same one.
    snapshots = [load_file(m / "t" / "ppo" / "snapshots" / "step_1" / "model" / "model.safetensors") for m in machines]
    assert all(torch.equal(snapshots[0][name], snapshots[1][name]) for name in snapshots[0])

    summary = json.loads((machines[0] / "t" / "ppo" / "summary.json").read_text())
    # 2 processes x 8 rollouts per step: 32 episodes in 2 steps (one process alone would take 4).
    assert summary["metrics"]["global_step"] == 2 and summary["metrics"]["episodes"] == 32


def test_cluster_launch_files_parse():
    config = yaml.safe_load(MULTI_NODE.read_text())
    assert config["distributed_type"] == "DEEPSPEED" and config["rdzv_backend"] == "static"
    # Every node starts its own launcher: no pdsh/ssh from node 0.
    assert config["deepspeed_config"]["deepspeed_multinode_launcher"] == "standard"
    assert (REPO / config["deepspeed_config"]["deepspeed_config_file"]).exists()
    subprocess.run(["bash", "-n", str(SBATCH)], check=True)
    script = SBATCH.read_text()
    for flag in ("--machine_rank", "--main_process_ip", "--num_machines", "--num_processes", "-m ppo.train"):
        assert flag in script, flag
