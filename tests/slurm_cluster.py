"""A one-node Slurm cluster of Debian's slurm-wlm and munge, started for the tests that need a real one.

No systemd here, so the daemons are started by hand: ``munged`` as the munge user (unless one
already answers), then ``slurmctld -D`` and ``slurmd -D`` on a ``slurm.conf`` written for this
host (its short name, cores and memory) into a temporary folder that ``SLURM_CONF`` points every
Slurm command at. ``proctrack/linuxproc`` and ``task/none`` need no cgroups; there is no
``cgroup.conf`` (Slurm 22.05 has no ``CgroupPlugin=disabled``) and no accounting. Every daemon
started here is stopped, by its PID, when the cluster closes.
"""

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo", "scancel")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


def _slurm_conf(folder: Path, host: str, cpus: int, memory_mb: int) -> str:
    return f"""ClusterName=clipsae-tests
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
KillWait=5
MinJobAge=600
NodeName={host} CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


class SlurmCluster:
    """Start with :meth:`start`; ``why_not`` is set (and nothing runs) where a cluster cannot be had."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.conf = folder / "slurm.conf"
        self.procs: list[subprocess.Popen] = []
        self.why_not: str | None = None

    def env(self) -> dict:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        """A Slurm client command against this cluster."""
        return subprocess.run(list(args), env=self.env(), capture_output=True, text=True, check=check, timeout=60)

    def start(self) -> "SlurmCluster":
        missing = [d for d in DAEMONS if shutil.which(d) is None]
        if missing:
            self.why_not = f"Slurm is not installed ({', '.join(missing)} missing): apt-get install slurm-wlm munge"
            return self
        if os.geteuid() != 0:
            self.why_not = "starting slurmd needs root"
            return self
        try:
            self._munge()
            host = socket.gethostname().split(".")[0]
            for sub in ("state", "spool"):
                (self.folder / sub).mkdir(parents=True)
            self.conf.write_text(_slurm_conf(self.folder, host, os.cpu_count() or 1, _memory_mb()))
            for daemon in ("slurmctld", "slurmd"):
                log = open(self.folder / f"{daemon}.out", "w")
                self.procs.append(subprocess.Popen([daemon, "-D", "-f", str(self.conf)], env=self.env(),
                                                   stdout=log, stderr=subprocess.STDOUT))
            self._wait_idle(host)
        except Exception as exc:  # whatever stops a cluster from coming up is a reason to skip, stated
            self.stop()
            self.why_not = f"the Slurm cluster did not start: {exc}"
        return self

    def _munge(self) -> None:
        """Use a munged that answers, or start one as the munge user and keep its PID."""
        if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
            return
        run_dir = Path("/run/munge")
        run_dir.mkdir(exist_ok=True)
        shutil.chown(run_dir, "munge", "munge")
        self.procs.append(subprocess.Popen(["runuser", "-u", "munge", "--", "munged", "--foreground"],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for _ in range(100):
            if subprocess.run("munge -n | unmunge", shell=True, capture_output=True).returncode == 0:
                return
            time.sleep(0.1)
        raise RuntimeError("munged did not answer")

    def _wait_idle(self, host: str) -> None:
        for _ in range(300):
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"{p.args[0]} exited with {p.returncode}; see {self.folder}")
            got = self.run("sinfo", "-h", "-n", host, "-o", "%t", check=False)
            if got.returncode == 0 and got.stdout.strip() == "idle":
                return
            time.sleep(0.1)
        raise RuntimeError(f"node {host} did not become idle; see {self.folder}")

    def stop(self) -> None:
        """Stop every daemon started here, by PID, newest first."""
        for p in reversed(self.procs):
            if p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
        self.procs.clear()
