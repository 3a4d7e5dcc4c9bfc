"""Jobs spanning two nodes of the local cluster (`scripts/local_slurm.sh start --nodes 2`: each node a network
namespace with its own hostname, address and slurmd), launched exactly as on a real cluster (gloo on CPU).

Runs, in order, after U (one node, 2 tasks; tests/slurm/conftest.py):
  M  slurm/pretrain.sbatch --nodes=2 --ntasks-per-node=1, EP=2 (one expert shard per node), 40 steps; while it
     runs, the test reads each task's hostname and TCP connections from outside (nsenter)
  MP the same job sent USR1 mid-run: both nodes' tasks checkpoint and exit, the job requeues itself and restarts
     on both nodes
  K  the same job (checkpoint every 4 steps, parallel.timeout_s=30): its task on the second node is SIGKILLed
     from outside mid-run; then `scontrol requeue` restarts it from the last complete checkpoint to step 40
  E  slurm/export.sbatch --nodes=2 of K's last checkpoint, verify=true (the training engine rebuilt on both nodes)
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.slurm.conftest import (
    CPU_SHAPE,
    STEPS,
    explain,
    job_env,
    job_info,
    losses,
    losses_of_start,
    node_states,
    skip_or_fail,
    submit,
    usable_nodes,
    wait_done,
    wait_for_steps,
)

pytestmark = [pytest.mark.slurm, pytest.mark.multiprocess, pytest.mark.slow]

TWO_NODES = ["--nodes=2", "--ntasks-per-node=1", *CPU_SHAPE]
KILL_TIMEOUT_S = 30  # parallel.timeout_s of K: the step must end within it after a task dies


@pytest.fixture(scope="module")
def nodes(cluster) -> dict[str, str]:
    """Node name -> the address slurm.conf gives it (NodeAddr)."""
    names = usable_nodes()
    if len(names) < 2:
        skip_or_fail(f"the cluster has {len(names)} usable node(s) ({names}); two-node jobs need "
                     f"`scripts/local_slurm.sh stop && scripts/local_slurm.sh start --nodes 2`")
    rows = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %o"], capture_output=True, text=True).stdout.split("\n")
    return dict(row.split() for row in rows if row.strip())


def _tasks(job_id: str) -> dict[int, int]:
    """SLURM_PROCID -> pid of the job's `python -m train.*` processes (all nodes share this machine's pids)."""
    found = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if b"-m" not in cmdline or not any(a.startswith(b"train.") for a in cmdline):
                continue
            env = dict(v.split("=", 1) for v in (proc / "environ").read_bytes().decode(errors="replace").split("\0")
                       if "=" in v)
        except OSError:  # ended meanwhile
            continue
        if env.get("SLURM_JOB_ID") == job_id and "SLURM_PROCID" in env and "SLURM_STEP_ID" in env:
            found[int(env["SLURM_PROCID"])] = int(proc.name)
    return found


def _plain(endpoint: str) -> str:
    """An IPv4 endpoint of an IPv6 socket, "[::ffff:10.0.0.1]:80", as "10.0.0.1:80"."""
    return re.sub(r"^\[::ffff:([0-9.]+)\]", r"\1", endpoint)


def _outside_view(pid: int) -> tuple[str, list[tuple[str, str]]]:
    """A task's hostname (its UTS namespace) and its established TCP connections (local, peer), read with nsenter
    from this machine's namespaces, independently of what the task prints."""
    host = subprocess.run(["nsenter", "-t", str(pid), "-u", "hostname"], capture_output=True, text=True).stdout
    ss = subprocess.run(["nsenter", "-t", str(pid), "-n", "ss", "-Htnp", "state", "established"],
                        capture_output=True, text=True).stdout
    # with a state filter ss prints: Recv-Q Send-Q Local:Port Peer:Port users:(("python",pid=N,fd=M))
    conns = [(_plain(f[2]), _plain(f[3])) for f in map(str.split, ss.splitlines())
             if len(f) > 4 and f"pid={pid}," in f[4]]
    return host.strip(), conns


def _watch(job_id: str, log: Path, metrics: Path) -> dict[int, tuple[str, list[tuple[str, str]]]]:
    """Sample every task from outside once the run is training (connections are up), until it has 2 tasks."""
    wait_for_steps(job_id, log, metrics, 2)
    for _ in range(50):
        tasks = _tasks(job_id)
        if len(tasks) == 2:
            return {rank: _outside_view(pid) for rank, pid in tasks.items()}
        time.sleep(0.1)
    raise AssertionError(f"job {job_id}: expected 2 tasks, found {_tasks(job_id)}\n{explain(job_id, log)}")


def _dist_lines(text: str) -> list[tuple[int, str, str, str, str]]:
    """The per-node `[dist]` lines: (rank, host, rendezvous host, its port, the address it resolved to)."""
    return [(int(r), h, m, p, a) for r, h, m, p, a in
            re.findall(r"\[dist\] rank (\d+) of 2 \(local rank 0\) on (\S+): rendezvous ([^:\s]+):(\d+) \(([^)]+)\)",
                       text)]


@pytest.fixture(scope="module")
def two_node(nodes, uninterrupted, tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("slurm_m")
    job_id, log = submit(tmp, shared_data, TWO_NODES)
    run_dir = tmp / "runs" / f"moe-pretrain-{job_id}"
    seen = _watch(job_id, log, run_dir / "metrics.jsonl")
    info = wait_done(job_id, log, timeout=420)
    assert info["JobState"] == "COMPLETED", explain(job_id, log)
    return {"job_id": job_id, "info": info, "log": log, "run_dir": run_dir, "runs": tmp / "runs", "seen": seen}


@pytest.fixture(scope="module")
def preempted_two_node(nodes, tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("slurm_mp")
    # srun --label (SLURM_LABELIO, read by the srun inside the job) prefixes each line with its task's rank
    job_id, log = submit(tmp, shared_data, TWO_NODES, env={"SLURM_LABELIO": "1"})
    run_dir = tmp / "runs" / f"moe-pretrain-{job_id}"
    wait_for_steps(job_id, log, run_dir / "metrics.jsonl", 3)
    signalled = subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], capture_output=True, text=True)
    assert signalled.returncode == 0, signalled.stderr
    info = wait_done(job_id, log, timeout=480)
    assert info["JobState"] == "COMPLETED", explain(job_id, log)
    return {"job_id": job_id, "info": info, "log": log, "run_dir": run_dir}


@pytest.fixture(scope="module")
def killed(nodes, tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("slurm_k")
    job_id, log = submit(tmp, shared_data, TWO_NODES,
                         extra=["trainer.checkpoint_every=4", f"parallel.timeout_s={KILL_TIMEOUT_S}"])
    run_dir = tmp / "runs" / f"moe-pretrain-{job_id}"
    wait_for_steps(job_id, log, run_dir / "metrics.jsonl", 10)
    victim = _tasks(job_id)[1]
    victim_host = _outside_view(victim)[0]
    os.kill(victim, signal.SIGKILL)  # as the OOM killer or a crashing rank would
    killed_at = time.monotonic()
    info = wait_done(job_id, log, timeout=300, poll=0.2)
    ended_after_s = time.monotonic() - killed_at
    last_logged = losses(run_dir)[-1][0]
    complete = sorted(int(p.parent.name.split("_")[1]) for p in (run_dir / "checkpoints").glob("step_*/COMPLETE"))
    deadline = time.monotonic() + 120  # as an operator would: requeue once the nodes have cleaned up the job
    while set(node_states().values()) != {"idle"}:
        assert time.monotonic() < deadline, f"the nodes did not become idle after job {job_id}\n{explain(job_id, log)}"
        time.sleep(0.5)
    requeued = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True)
    assert requeued.returncode == 0, requeued.stderr
    deadline = time.monotonic() + 60
    while job_info(job_id).get("Restarts") != "1" and time.monotonic() < deadline:
        time.sleep(0.5)
    restarted = wait_done(job_id, log, timeout=480)
    return {"job_id": job_id, "log": log, "run_dir": run_dir, "first": info, "ended_after_s": ended_after_s,
            "victim_host": victim_host, "last_logged": last_logged, "complete": complete, "restarted": restarted}


@pytest.fixture(scope="module")
def exported(killed, two_node, tmp_path_factory, shared_data):
    tmp = tmp_path_factory.mktemp("slurm_e")
    ckpt = killed["run_dir"] / "checkpoints" / f"step_{STEPS:08d}"
    job_id, log = submit(tmp, shared_data, TWO_NODES, script="slurm/export.sbatch",
                         overrides=[f"checkpoint={ckpt}", f"out={tmp}/export", "verify=true", "export.dtype=float32"])
    info = wait_done(job_id, log, timeout=420)
    assert info["JobState"] == "COMPLETED", explain(job_id, log)
    # the reference: a one-process export (no job) of the uninterrupted two-node run's last checkpoint
    reference = two_node["run_dir"] / "checkpoints" / f"step_{STEPS:08d}"
    proc = subprocess.run([sys.executable, "-m", "train.export", f"checkpoint={reference}", f"out={tmp}/reference",
                           "export.dtype=float32", f"paths.cache_dir={shared_data['cache']}"],
                          cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {"job_id": job_id, "info": info, "log": log, "out": tmp / "export", "reference": tmp / "reference"}


def test_two_node_job_runs_one_task_per_host_and_meets_over_the_bridge(two_node, nodes):
    job_id, log, seen = two_node["job_id"], two_node["log"], two_node["seen"]
    first, second = sorted(nodes)[:2]
    assert two_node["info"]["NodeList"] == "moe-n[1-2]" and two_node["info"]["NumNodes"] == "2", two_node["info"]
    # read from outside: task 0 runs in the first node's namespaces, task 1 in the second's
    assert (seen[0][0], seen[1][0]) == (first, second), seen
    lines = _dist_lines(log.read_text())
    assert sorted((rank, host) for rank, host, *_ in lines) == [(0, first), (1, second)], explain(job_id, log)
    # both resolved the rendezvous host to the first node's bridge address (slurm.conf's NodeAddr), not loopback
    assert {(m, a) for _, _, m, _, a in lines} == {(first, nodes[first])}, lines
    port = lines[0][3]
    # and task 1 is connected, from its own address, to that address and port (the TCPStore), never to loopback
    assert (f"{nodes[second]}", f"{nodes[first]}:{port}") in {(loc.rsplit(":", 1)[0], peer) for loc, peer in seen[1][1]}, seen
    assert not any(peer.startswith(("127.", "[::1]")) for _, peer in seen[1][1]), seen
    print(f"M: task 0 on {seen[0][0]}, task 1 on {seen[1][0]}; task 1's connections: {seen[1][1]}")


def test_two_node_loss_curve_equals_the_one_node_job(two_node, uninterrupted):
    two, one = losses(two_node["run_dir"]), losses(uninterrupted["run_dir"])
    assert [s for s, _ in two] == [s for s, _ in one] == list(range(1, STEPS + 1))
    worst = max(abs(a - b) / abs(b) for (_, a), (_, b) in zip(two, one, strict=True))
    print(f"M vs U: max relative loss difference over {STEPS} steps {worst:.2e}")
    assert worst <= 1e-6


def test_two_node_run_writes_checkpoints_metrics_and_wandb_once(two_node):
    run_dir = two_node["run_dir"]
    assert sorted(p.name for p in two_node["runs"].iterdir()) == [run_dir.name]  # one run folder, not one per node
    assert [s for s, _ in losses(run_dir)] == list(range(1, STEPS + 1))  # every step logged once (rank 0)
    run_id = (run_dir / "wandb_run_id").read_text().strip()
    assert [p.name for p in (run_dir / "wandb").glob("offline-run-*")] == [p.name for p in
                                                                          (run_dir / "wandb").glob(f"*-{run_id}")]
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 1
    ckpt = run_dir / "checkpoints" / f"step_{STEPS:08d}"
    assert (ckpt / "COMPLETE").exists()
    meta = json.loads((ckpt / "meta.json").read_text())
    assert meta["topology"]["world_size"] == 2 and meta["topology"]["ep_size"] == 2, meta
    names = {p.name for p in ckpt.iterdir()}
    # the shared files once; each rank's own optimizer shard and trainer state (one per node); all 8 experts
    assert len([n for n in names if n == "mp_rank_00_model_states.pt"]) == 1
    assert {n for n in names if n.startswith(("zero_pp_rank_", "trainer_state_rank"))} == {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt", "zero_pp_rank_1_mp_rank_00_optim_states.pt",
        "trainer_state_rank0.pt", "trainer_state_rank1.pt"}
    assert {n for n in names if n.startswith("layer_")} == {
        f"layer_{layer}_expert_{e}_mp_rank_00_model_states.pt" for layer in range(2) for e in range(8)}


def test_usr1_on_two_nodes_checkpoints_both_requeues_and_restarts_on_both(preempted_two_node, uninterrupted):
    job_id, log, run_dir = preempted_two_node["job_id"], preempted_two_node["log"], preempted_two_node["run_dir"]
    text = log.read_text()
    assert preempted_two_node["info"]["Restarts"] == "1", explain(job_id, log)
    # srun delivered the signal to the task on each node, and both finished their step and exited 0
    for rank in (0, 1):
        assert re.search(rf"^{rank}: .*signal 10: will checkpoint and exit after this step", text, re.M), text[-4000:]
    first_start = text.split(f"requeued job {job_id}")[0]
    assert "srun finished with status 0" in first_start, explain(job_id, log)
    stop_step = int(re.search(r"stopping at step (\d+) \(signal\)", text).group(1))
    assert 3 <= stop_step < STEPS, stop_step
    ckpt = {p.name for p in (run_dir / "checkpoints" / f"step_{stop_step:08d}").iterdir()}
    assert {"COMPLETE", "trainer_state_rank0.pt", "trainer_state_rank1.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt",
            "zero_pp_rank_1_mp_rank_00_optim_states.pt"} <= ckpt, ckpt
    # the restart ran on both nodes again and resumed where the two tasks stopped
    assert re.search(rf"job {job_id} \(restart 1\) on moe-n\[1-2\]: 2 tasks", text), explain(job_id, log)
    restart = text.split("(restart 1)")[1]
    assert sorted((r, h) for r, h, *_ in _dist_lines(restart)) == [(0, "moe-n1"), (1, "moe-n2")], restart[:3000]
    assert f"resumed from step_{stop_step:08d} at step {stop_step}" in restart, explain(job_id, log)
    resumed, reference = losses(run_dir), dict(losses(uninterrupted["run_dir"]))
    assert [s for s, _ in resumed] == list(range(1, STEPS + 1))
    for step, loss in resumed:
        assert loss == pytest.approx(reference[step], rel=1e-6, abs=0), (step, loss, reference[step])
    print(f"MP: stopped at step {stop_step}, requeued, final loss {resumed[-1][1]:.6f} (U: {reference[STEPS]:.6f})")


def test_task_killed_on_the_second_node_ends_the_step_within_timeout(killed):
    job_id, log = killed["job_id"], killed["log"]
    assert killed["victim_host"] == "moe-n2"
    assert killed["first"]["JobState"] == "FAILED", explain(job_id, log)
    print(f"K: the step ended {killed['ended_after_s']:.1f} s after task 1 on {killed['victim_host']} was killed "
          f"(parallel.timeout_s={KILL_TIMEOUT_S}); last logged step {killed['last_logged']}, complete checkpoints "
          f"{killed['complete']}")
    assert killed["ended_after_s"] < KILL_TIMEOUT_S


def test_restart_after_the_kill_resumes_from_the_last_complete_checkpoint(killed, uninterrupted):
    job_id, log, run_dir = killed["job_id"], killed["log"], killed["run_dir"]
    assert killed["restarted"]["JobState"] == "COMPLETED" and killed["restarted"]["Restarts"] == "1", \
        explain(job_id, log)
    last = max(killed["complete"])
    assert 8 <= last <= killed["last_logged"], killed
    restart = log.read_text().split("(restart 1)")[1]
    assert re.search(r"on moe-n\[1-2\]: 2 tasks", restart), restart[:2000]
    assert f"resumed from step_{last:08d} at step {last}" in restart, explain(job_id, log)
    resumed, reference = losses_of_start(run_dir, last), dict(losses(uninterrupted["run_dir"]))
    assert sorted(resumed) == list(range(last + 1, STEPS + 1))
    for step, loss in resumed.items():
        assert loss == pytest.approx(reference[step], rel=1e-6, abs=0), (step, loss, reference[step])


def test_export_of_the_two_node_run_as_a_two_node_job(exported):
    from safetensors.torch import load_file

    job_id, log = exported["job_id"], exported["log"]
    text = log.read_text()
    assert sorted((r, h) for r, h, *_ in _dist_lines(text)) == [(0, "moe-n1"), (1, "moe-n2")], explain(job_id, log)
    diff = float(re.search(r"verify: max \|logit difference\| export vs training model = (\S+)", text).group(1))
    assert diff <= 1e-4, diff
    # K (killed, resumed) ends with the weights of M (uninterrupted): the two exports hold the same tensors
    ours, ref = load_file(exported["out"] / "model-00001-of-00001.safetensors"), \
        load_file(exported["reference"] / "model-00001-of-00001.safetensors")
    assert ours.keys() == ref.keys() and len(ours) > 0
    worst = max((ours[k] - ref[k]).abs().max().item() for k in ours)
    print(f"E: verify diff {diff:.2e}; export of K vs M's: {len(ours)} tensors, max |difference| {worst:.2e}")
    assert worst <= 1e-5


def test_submit_refuses_a_verified_export_at_another_world_size(two_node, tmp_path):
    ckpt = two_node["run_dir"] / "checkpoints" / f"step_{STEPS:08d}"
    cmd = ["bash", "scripts/submit.sh", "--ntasks-per-node=1", *CPU_SHAPE, "slurm/export.sbatch",
           f"checkpoint={ckpt}", f"out={tmp_path}/out", "verify=true"]
    proc = subprocess.run(cmd, cwd=ROOT, env=job_env(), capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "run it on the checkpoint's world size 2 (ranks), not 1" in proc.stderr, proc.stderr
    assert "nothing was queued" in proc.stderr



MAPPING_PROBE = """
import json, os, socket
import torch.distributed as dist
from train.engine.distributed import adopt_slurm_rank_env, init_distributed
adopt_slurm_rank_env()
info = init_distributed("gloo", timeout_s=60)
mine = (info.rank, info.local_rank, info.world_size, socket.gethostname(), os.environ["MASTER_ADDR"],
        os.environ.get("GLOO_SOCKET_IFNAME"))
everyone = [None] * info.world_size
dist.all_gather_object(everyone, mine)
if info.rank == 0:
    print("MAPPING " + json.dumps(everyone), flush=True)
dist.destroy_process_group()
"""


def test_two_tasks_per_node_get_node_local_ranks_and_meet_on_the_first_node(nodes):
    """srun -N2 --ntasks-per-node=2, as the sbatch files launch: Slurm's block layout, ranks 0-1 on the first
    node and 2-3 on the second, local ranks 0-1 on each; all four meet through gloo over the bridge."""
    cmd = ["srun", "--nodes=2", "--ntasks-per-node=2", "--cpus-per-task=1", "--time=5", "--kill-on-bad-exit=1",
           sys.executable, "-c", MAPPING_PROBE]
    proc = subprocess.run(cmd, cwd=ROOT, env=job_env(OMP_NUM_THREADS="1"), capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    mapping = json.loads(proc.stdout.split("MAPPING ", 1)[1].splitlines()[0])
    first, second = sorted(nodes)[:2]
    assert [tuple(m[:4]) for m in mapping] == [(0, 0, 4, first), (1, 1, 4, first), (2, 0, 4, second),
                                               (3, 1, 4, second)], mapping
    assert {(m[4], m[5]) for m in mapping} == {(first, "eth0")}, mapping  # the bridge-side interface of each node
