"""Sweeps on a cluster: each run as a scheduler job with the resources the planner computes for it.

``tcf sweep FILE --launcher slurm`` submits every unfinished run of the experiment through
``submitit`` (the ``cluster`` extra): one job per run, runs of the same shape (resources and launch
command) in one job array.  A run's GPUs, CPU memory and launch prefix come from
:mod:`tcf.experiments.planner` for that run's model, precision and tower on the node the ``launcher:``
section of the experiment file describes: the fewest GPUs on which an option that the run's own
settings select fits (a bf16 run is never given the GPUs of the int8 option, an hf run never those
of vLLM tensor parallelism).  Where nothing fits, the table says what the planner would choose.

A job runs ``tcf sweep FILE --out OUT --run RUN_ID`` (under ``torchrun`` where the run's
``train.strategy`` is ddp or deepspeed), so it does what a local sweep does for that run: skip it
when finished, resume it from ``checkpoints/last.pt`` when a job was killed or pre-empted, write
``OUT/RUN_ID/launch.log``.  Submitting again resubmits only unfinished runs with no job still
queued or running.  Runs that read the same embedding cache wait for the first of them (a SLURM
dependency), so each cache is extracted once, not raced.

The experiment file's ``launcher:`` section (every key optional)::

    launcher:
      partition: gpu
      account: myproject
      gpus_per_node: 8          # the node the planner sizes runs for
      gpu_mem: 80GB
      cpu_mem: 1TB              # per node
      time: "12:00:00"          # per run (SLURM's D-HH:MM:SS, or 90m / 12h)
      setup: ["module load cuda/12.4", "source .venv/bin/activate"]
      slurm: {constraint: a100}  # more sbatch options, as is
      resources:                 # overrides per axis value: gpus, nodes, mem, time, cpus
        encoder.model:
          facebook/opt-66b: {time: "2-00:00:00"}

``--launcher submitit-local`` runs the same jobs as local subprocesses through submitit's local
executor (the tests use it); ``--dry-run`` prints the job table and submits nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from tcf.config import flatten, from_dict, load_yaml, to_dict
from tcf.errors import ConfigError, TcfError
from tcf.experiments.sweep import (
    Experiment,
    Run,
    RunFolderError,
    cache_kind,
    cache_needs,
    check_experiment_folder,
    check_run_folder,
    run_folder,
    write_plan,
)
from tcf.fsutil import atomic_write_text

LAUNCH_DIR = "launch"  # OUT/launch: submitit's pickles and logs, and jobs.json
JOBS_FILE = "jobs.json"
ACTIVE = ("PENDING", "RUNNING", "REQUEUED", "CONFIGURING", "COMPLETING", "RESIZING", "SUSPENDED")
LAUNCHERS = ("local", "slurm", "submitit-local")
GiB = 1024**3


class LaunchError(TcfError):
    pass


@dataclass(frozen=True)
class LauncherConfig:
    """The ``launcher:`` section of an experiment file: the node runs are sized for, and scheduler settings."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    gpus_per_node: int = 8
    gpu_mem: str = "80GB"
    cpu_mem: str = "512GB"  # per node
    cpus_per_gpu: int = 8
    min_mem: str = "32GB"  # CPU memory asked for even where the planner counts less (data, Python, the head)
    time: str = "12:00:00"  # per run
    array_parallelism: int = 64  # array tasks running at once
    setup: list[str] = field(default_factory=list)  # shell lines before each job (modules, environment)
    slurm: dict = field(default_factory=dict)  # further sbatch options, passed as is
    resources: dict = field(default_factory=dict)  # {setting: {value: {gpus, nodes, mem, time, cpus}}}


def launcher_config(exp: Experiment) -> LauncherConfig:
    data = (load_yaml(exp.source) or {}).get("launcher") if exp.source else None
    return from_dict(LauncherConfig, data or {}, "launcher")


def minutes(text: str | int) -> int:
    """'12:00:00' / '2-00:00:00' / '90m' / '12h' / 90 -> minutes."""
    t = str(text).strip().lower()
    if m := re.fullmatch(r"(\d+(?:\.\d+)?)\s*([mhd]?)", t):
        return math.ceil(float(m[1]) * {"": 1, "m": 1, "h": 60, "d": 1440}[m[2]])
    if m := re.fullmatch(r"(?:(\d+)-)?(\d+):(\d+)(?::(\d+))?", t):
        days, a, b, c = int(m[1] or 0), int(m[2]), int(m[3]), m[4]
        return days * 1440 + (a * 60 + b + math.ceil(int(c) / 60) if c is not None else a * 60 + b)
    raise ConfigError(f"launcher time: cannot read {text!r} (e.g. 12:00:00, 2-00:00:00, 90m, 12h)")


# ---------------------------------------------------------------- resources from the planner

@dataclass(frozen=True)
class Resources:
    nodes: int
    gpus_per_node: int
    mem_gb: int
    cpus: int
    time_min: int
    verdict: str  # what the planner says the run uses
    note: str = ""  # where the run's settings and the plan disagree

    def shape(self) -> tuple:
        return (self.nodes, self.gpus_per_node, self.mem_gb, self.cpus, self.time_min)

    def text(self) -> str:
        gpus = f"{self.nodes}x{self.gpus_per_node} GPU" if self.nodes > 1 else f"{self.gpus_per_node} GPU"
        return f"{gpus}, {self.mem_gb} GB, {self.cpus} CPU, {_hours(self.time_min)}"


def _hours(m: int) -> str:
    return f"{m // 1440}-{m % 1440 // 60:02d}:{m % 60:02d}:00" if m >= 1440 else f"{m // 60}:{m % 60:02d}:00"


@functools.lru_cache(maxsize=64)
def _arch(model: str, keep: int | None):
    from tcf.experiments.planner import load_config, measure

    config = load_config(model)[0]
    if keep is None:
        return measure(config)
    n = measure(config).n_layers
    return measure(config, keep=n - keep) if keep else measure(config)


def selects(flags: str, spec) -> bool:
    """Whether a run with encoder settings ``spec`` runs the planner option with these ``tcf extract`` flags:
    the same backend and quantization (which change the vectors), and device_map sharding only where asked."""
    backend = re.search(r"--backend (\S+)", flags)
    quant = re.search(r"--quantization (\S+)", flags)
    return ((backend[1] if backend else "hf") == spec.backend and (quant[1] if quant else None) == spec.quantization
            and ("--device-map" not in flags or bool(spec.device_map)))


def gpu_counts(lc: LauncherConfig) -> list[int]:
    n, out, g = lc.gpus_per_node, [], 1
    while g < n:
        out.append(g)
        g *= 2
    return out + [n] if n else [0]


def _items(cfg) -> int | None:
    """The dataset's item count when the folder is here (the cache size and time need it), else None."""
    for folder in (Path(cfg.data.dataset), Path(cfg.data.root) / cfg.data.dataset):
        try:
            return int(json.loads((folder / "dataset.json").read_text())["n_items"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    return None


def plan_run(run: Run, lc: LauncherConfig) -> tuple[int, str, str, int]:
    """-> (GPUs, the planner's verdict, a note, CPU bytes the chosen option needs), for one run on one node."""
    cfg = run.config
    kind = cache_kind(cfg)
    if getattr(cfg, "task", "train") == "zeroshot":
        remote = cfg.zeroshot.backend == "openai"
        return (0 if remote else min(1, lc.gpus_per_node)), f"zero-shot, {cfg.zeroshot.backend} backend", "", 0
    if kind is None:
        return min(1, lc.gpus_per_node), "ID tower (no language model)" if cfg.model.tower == "id" else \
            "cache given (cache_path)", "", 0
    from tcf.experiments.planner import Hardware, extraction_options, fits, parse_bytes, plan

    spec, k = cfg.encoder, cfg.model.finetune_layers if kind == "tokens" else 0
    try:
        arch = _arch(spec.model, k if kind == "tokens" else None)
    except TcfError as e:
        return min(1, lc.gpus_per_node), "not planned", f"{e}".splitlines()[0], 0
    per_gpu, cpu = parse_bytes(lc.gpu_mem, "launcher.gpu_mem"), parse_bytes(lc.cpu_mem, "launcher.cpu_mem")
    batch = cfg.train.batch_size if k else spec.batch_size
    job = {"kind": kind, "batch": spec.batch_size, "tokens": spec.max_tokens}
    first_choice = None
    for g in gpu_counts(lc):
        hw = Hardware(g, per_gpu if g else 0, cpu)
        opts = [o for o in extraction_options(arch, hw, job, spec.dtype) if fits(o, hw)]
        first_choice = first_choice or (opts[0].name if opts else None)
        mine = next((o for o in opts if selects(o.flags, spec)), None)
        if mine is None:
            continue
        verdict, need_cpu, note = f"extract: {mine.name}", mine.cpu, ""
        if k:
            ft = plan(spec.model, hw, items=_items(cfg), tokens=spec.max_tokens, batch=batch, finetune_layers=k,
                      dtype=spec.dtype, loss=cfg.train.loss, max_len=cfg.model.max_len)["finetune"]
            if not ft.get("chosen"):
                continue
            verdict += f"; fine-tune: {ft['chosen']}"
            note = _train_mismatch(ft.get("command", ""), cfg)
            chosen = next((o for o in ft["options"] if o["name"] == ft["chosen"]), {})
            need_cpu = max(need_cpu, chosen.get("cpu_bytes", 0))
        return g, verdict, note, need_cpu
    planner_pick = f"the planner would choose {first_choice}" if first_choice else "nothing fits"
    return lc.gpus_per_node, "no option fits one node", f"{planner_pick}; the run's encoder settings " \
        f"(backend {spec.backend}, quantization {spec.quantization}, device_map {spec.device_map}) select none " \
        "that fits: set them in the experiment, or give more GPUs (launcher.resources)", 0


def _train_mismatch(command: str, cfg) -> str:
    """The ``train.*`` settings the planner's fine-tuning command sets that the run does not have."""
    want = dict(re.findall(r"train\.(\w+)=(\S+)", command))
    have = {k: str(v).lower() for k, v in to_dict(cfg.train).items()}
    missing = [f"train.{k}={v}" for k, v in want.items() if k not in ("loss", "batch_size") and have.get(k) != v]
    return f"the plan fine-tunes with {' '.join(missing)}; set it in the experiment" if missing else ""


def _override(run: Run, lc: LauncherConfig) -> dict:
    """The ``launcher.resources`` entries matching this run's settings, merged in file order."""
    settings, out = flatten(to_dict(run.config)), {}
    for key, by_value in (lc.resources or {}).items():
        if not isinstance(by_value, dict):
            raise ConfigError(f"launcher.resources.{key}: expected {{value: {{gpus: ..., time: ...}}}}")
        if key not in settings:
            raise ConfigError(f"launcher.resources: {key} is not a run setting")
        for value, res in by_value.items():
            if str(settings[key]) == str(value):
                unknown = set(res) - {"gpus", "nodes", "mem", "time", "cpus"}
                if unknown:
                    raise ConfigError(f"launcher.resources.{key}.{value}: unknown {sorted(unknown)} "
                                      "(gpus, nodes, mem, time, cpus)")
                out.update(res)
    return out


def resources(run: Run, lc: LauncherConfig) -> Resources:
    from tcf.experiments.planner import CPU_RESERVE_BYTES, parse_bytes

    gpus, verdict, note, cpu_bytes = plan_run(run, lc)
    extra = _override(run, lc)
    gpus = int(extra.get("gpus", gpus))
    node = parse_bytes(lc.cpu_mem, "launcher.cpu_mem")
    mem = max(parse_bytes(lc.min_mem, "launcher.min_mem"), int(cpu_bytes * 1.1) + CPU_RESERVE_BYTES)
    mem = parse_bytes(str(extra["mem"]), "launcher.resources mem") if "mem" in extra else min(mem, node)
    cpus = int(extra.get("cpus", max(1, gpus) * lc.cpus_per_gpu))
    return Resources(int(extra.get("nodes", 1)), gpus, math.ceil(mem / GiB), cpus,
                     minutes(extra.get("time", lc.time)), verdict + (" (launcher.resources)" if extra else ""), note)


# ---------------------------------------------------------------- jobs

@dataclass
class Job:
    run: Run
    res: Resources
    state: str  # done | new | resume | active | refused
    command: list[str]
    after: str | None = None  # run id whose job extracts the cache this run reads (it waits for that job)
    job_id: str | None = None
    handle: object = None  # the submitit job, while this process follows it


def launch_prefix(run: Run, res: Resources) -> list[str]:
    """torchrun where the run's own settings are distributed (train.strategy ddp / deepspeed), else nothing."""
    if run.config.train.strategy == "none" or res.gpus_per_node * res.nodes <= 1:
        return []
    if res.nodes > 1:  # the node rank and the master's address are filled in by the job (RunJob)
        return ["torchrun", f"--nnodes={res.nodes}", f"--nproc-per-node={res.gpus_per_node}", "--node-rank={NODE}",
                "--master-addr={MASTER}", "--master-port=29500"]
    return ["torchrun", "--standalone", f"--nproc-per-node={res.gpus_per_node}"]


def run_command(exp: Experiment, out: Path, run: Run, res: Resources, overrides: list[str] | None) -> list[str]:
    prefix = launch_prefix(run, res)
    head = [*prefix, "-m", "tcf"] if prefix else [sys.executable, "-m", "tcf"]
    sets = ["--set", *overrides] if overrides else []
    return [*head, "sweep", str(Path(exp.source).resolve()), "--out", str(out.resolve()), "--run", run.id,
            "--no-report", "--quiet", *sets]


def plan_jobs(exp: Experiment, out: Path, lc: LauncherConfig, *, overrides: list[str] | None = None,
              force: bool = False, active: dict[str, str] | None = None) -> list[Job]:
    """Every run of ``exp`` with its resources, command and state; followers of a shared cache name their leader."""
    jobs = []
    for run in exp.runs:
        try:
            state = check_run_folder(run_folder(out, run), run.config, force=force)
        except RunFolderError:
            state = "refused"
        if state != "done" and (active or {}).get(run.id):
            state = "active"
        res = resources(run, lc)
        jobs.append(Job(run, res, state, run_command(exp, out, run, res, overrides)))
    by_id = {j.run.id: j for j in jobs}
    for group in cache_needs([j.run for j in jobs if j.state in ("new", "resume")]).values():
        for follower in group[1:]:
            by_id[follower.id].after = group[0].id
    return jobs


def render(jobs: list[Job]) -> str:
    """The job table: one line per run (state, resources, the planner's verdict), its command, and the arrays."""
    lines = [f"{'run':<48} {'state':<8} {'resources':<34} plan"]
    for j in jobs:
        lines.append(f"{j.run.id:<48} {j.state:<8} {j.res.text():<34} {j.res.verdict}"
                     + (f"  [waits for {j.after}]" if j.after else ""))
        if j.res.note:
            lines.append(f"{'':<48} note: {j.res.note}")
        lines.append(f"{'':<4}$ {shlex.join(j.command)}")
    todo = [j for j in jobs if j.state in ("new", "resume")]
    arrays = _arrays(todo)
    lines.append(f"{len(jobs)} run(s): {sum(j.state == 'done' for j in jobs)} done, {len(todo)} to submit "
                 f"in {len(arrays)} job array(s)" + (f", {sum(j.state == 'active' for j in jobs)} still queued or "
                                                     "running" if any(j.state == "active" for j in jobs) else ""))
    for (_shape, wave), members in arrays.items():
        lines.append(f"  array: {len(members)} run(s), {members[0].res.text()}"
                     + (" (after the runs that extract their caches)" if wave else ""))
    return "\n".join(lines)


def _arrays(jobs: list[Job]) -> dict[tuple, list[Job]]:
    """Runs of one shape (resources, launch prefix) and wave (leaders first) share a job array."""
    out: dict[tuple, list[Job]] = {}
    for j in jobs:
        key = (j.res.shape() + (tuple(launch_prefix(j.run, j.res)),), j.after is not None)
        out.setdefault(key, []).append(j)
    return out


# ---------------------------------------------------------------- what a job runs

class RunJob:
    """One run's job: the ``tcf sweep --run`` command, its output appended to ``OUT/RUN_ID/launch.log``.

    A subclass of submitit's Checkpointable at submission time (see :func:`_checkpointable`): a timed-out
    or pre-empted job is requeued with the same command, which resumes the run from its last checkpoint."""

    def __init__(self, command: list[str], log: str, setup: list[str]):
        self.command, self.log, self.setup = command, log, setup

    def __call__(self) -> int:
        command = self._fill(self.command)
        Path(self.log).parent.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a", encoding="utf-8") as f:
            f.write(f"\n==== {time.strftime('%Y-%m-%d %H:%M:%S')} {os.environ.get('SLURM_JOB_ID', 'local')} "
                    f"{shlex.join(command)}\n")
            f.flush()
            script = " && ".join([*self.setup, shlex.join(command)]) if self.setup else None
            proc = subprocess.run(script or command, shell=bool(script), stdout=f, stderr=subprocess.STDOUT)
        if proc.returncode:
            raise LaunchError(f"{shlex.join(command)} exited with {proc.returncode}; see {self.log}")
        return proc.returncode

    @staticmethod
    def _fill(command: list[str]) -> list[str]:
        """Multi-node torchrun: this node's rank and the first node's address, from the job environment."""
        if not any("{NODE}" in c for c in command):
            return command
        import submitit

        env = submitit.JobEnvironment()
        return [c.replace("{NODE}", str(env.node)).replace("{MASTER}", env.hostnames[0]) for c in command]


@functools.lru_cache(maxsize=1)
def _checkpointable():
    import submitit

    class CheckpointableRunJob(RunJob, submitit.helpers.Checkpointable):
        pass

    return CheckpointableRunJob


# ---------------------------------------------------------------- submitting

def _executor(cluster: str, folder: Path, res: Resources, lc: LauncherConfig, name: str, after: list[str]):
    try:
        import submitit
    except ImportError:
        raise LaunchError("--launcher slurm needs submitit: pip install -e \".[cluster]\"") from None
    ex = submitit.AutoExecutor(folder=str(folder / "%j"), cluster="slurm" if cluster == "slurm" else "local")
    gpus = res.gpus_per_node
    if cluster != "slurm":  # local subprocesses: the GPUs this machine has, at most
        gpus = min(gpus, _local_gpus())
    params = dict(name=name, timeout_min=res.time_min, gpus_per_node=gpus, nodes=res.nodes, tasks_per_node=1,
                  cpus_per_task=res.cpus, mem_gb=res.mem_gb)
    if cluster == "slurm":
        extra = dict(lc.slurm)
        if after:
            extra["dependency"] = "afterany:" + ":".join(after)
        params.update(slurm_partition=lc.partition, slurm_account=lc.account, slurm_qos=lc.qos,
                      slurm_array_parallelism=lc.array_parallelism, slurm_additional_parameters=extra or None)
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def _local_gpus() -> int:
    try:
        import torch

        return torch.cuda.device_count()
    except Exception:  # noqa: BLE001
        return 0


def active_jobs(out: Path, cluster: str) -> dict[str, str]:
    """run id -> job id, for the runs whose last submitted job is still queued or running (SLURM only)."""
    saved = _read(out / LAUNCH_DIR / JOBS_FILE)
    if cluster != "slurm" or not saved:
        return {}
    import submitit

    found = {}
    for run_id, info in saved.items():
        try:
            state = submitit.SlurmJob(out / LAUNCH_DIR / "%j", info["job_id"]).state
        except Exception:  # noqa: BLE001 - unknown: treat as gone, the run folder decides
            continue
        if state.split()[0] in ACTIVE:
            found[run_id] = info["job_id"]
    return found


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def submit(exp: Experiment, out: Path, jobs: list[Job], lc: LauncherConfig, cluster: str,
           log=print) -> list[Job]:
    """Submit the jobs to run, leaders (first run of each shared cache, and runs needing none) first; on the
    local executor, the followers once the leaders are done (there are no dependencies there)."""
    folder = out / LAUNCH_DIR
    folder.mkdir(parents=True, exist_ok=True)
    todo = [j for j in jobs if j.state in ("new", "resume")]
    by_id = {j.run.id: j for j in todo}
    job_cls = _checkpointable()
    submitted = []
    for wave in (False, True):
        if not any((j.after is not None) == wave for j in todo):
            continue
        if wave and cluster != "slurm":  # no dependencies on the local executor: the leaders first, then the rest
            for j in submitted:
                _wait(j)
        for (_, _), members in _arrays([j for j in todo if (j.after is not None) == wave]).items():
            after = sorted({by_id[m.after].job_id for m in members if m.after and by_id[m.after].job_id})
            ex = _executor(cluster, folder, members[0].res, lc, f"tcf-{exp.name}", after)
            with ex.batch():
                handles = [ex.submit(job_cls(m.command, str(run_folder(out, m.run) / "launch.log"), list(lc.setup)))
                           for m in members]
            for m, h in zip(members, handles):
                m.job_id, m.handle = str(h.job_id), h
                submitted.append(m)
            log(f"submitted {len(members)} run(s) as {'array ' if len(members) > 1 else ''}job "
                f"{handles[0].job_id.split('_')[0]}: {members[0].res.text()}")
    saved = _read(folder / JOBS_FILE)
    saved.update({j.run.id: {"job_id": j.job_id, "cluster": cluster, "resources": dataclasses.asdict(j.res),
                             "command": j.command, "submitted": time.time()} for j in submitted})
    atomic_write_text(folder / JOBS_FILE, json.dumps(saved, indent=2) + "\n")
    return submitted


def _wait(job: Job) -> None:
    try:
        job.handle.result()
    except Exception:  # noqa: BLE001 - a failed run is recorded in its folder; the others go on
        pass


def launch(exp: Experiment, out: str | Path, cluster: str, *, overrides: list[str] | None = None,
           dry_run: bool = False, force: bool = False, wait: bool = True, log=print) -> list[Job]:
    """Plan every run's job, print the table, and (unless ``dry_run``) submit the unfinished ones."""
    if cluster not in LAUNCHERS[1:]:
        raise ConfigError(f"--launcher must be one of {list(LAUNCHERS)}, got {cluster!r}")
    if exp.source is None:
        raise ConfigError("a launched sweep needs its experiment file (jobs run tcf sweep FILE --run RUN_ID)")
    out = Path(out)
    lc = launcher_config(exp)
    if not dry_run:
        check_experiment_folder(exp, out, force=force)
    jobs = plan_jobs(exp, out, lc, overrides=overrides, force=force,
                     active={} if dry_run else active_jobs(out, cluster))
    log(render(jobs))
    if dry_run:
        return jobs
    out.mkdir(parents=True, exist_ok=True)
    write_plan(exp, out)
    submitted = submit(exp, out, jobs, lc, cluster, log=log)
    if cluster != "slurm" and wait:
        for j in submitted:
            _wait(j)
    return jobs


def cli_launch(args) -> int:
    """``tcf sweep FILE --launcher slurm|submitit-local [--dry-run]``."""
    from tcf.experiments.sweep import load_experiment

    exp = load_experiment(args.config, args.set)
    out = Path(args.out) if args.out else Path("runs") / exp.name
    cluster = "slurm" if args.launcher == "local" else args.launcher  # --dry-run alone shows the cluster table
    if args.shard or args.run or getattr(args, "claim", False):
        raise ConfigError("--launcher submits every unfinished run; --shard, --run and --claim are for running here")
    jobs = launch(exp, out, cluster, overrides=args.set, dry_run=args.dry_run, force=args.force)
    if args.dry_run:
        return 0
    if cluster == "slurm":
        print(f"jobs: {out / LAUNCH_DIR / JOBS_FILE}; logs: OUT/RUN_ID/launch.log; submit again to resubmit "
              f"unfinished runs; when all are done: tcf report {out}")
        return 0
    done = [j for j in jobs if (run_folder(out, j.run) / "results.json").is_file()]
    print(f"{len(done)} of {len(jobs)} run(s) have results; when all are done: tcf report {out}")
    return 0 if len(done) == len(jobs) else 1
