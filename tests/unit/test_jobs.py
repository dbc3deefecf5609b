"""Every shipped example config in ``jobs/`` launches and validates as its header says.

Each ``jobs/**/*.yaml`` starts with comment lines giving its local command (``# edray <command> --config
<this file> ...``) and its Ray job command (``# ray job submit --working-dir . -- edray ...``). These
tests parse those commands against the real command line (``edray.cli.app``), validate the file against
the config class of that command's stage, and check that the examples chain: the world and student they
write are the ones the later stages read. No Ray, no models: seconds.
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import typer.main
import yaml
from pydantic import BaseModel

from edray.cli import QUICKSTART_CONFIG, STAGE_CONFIGS, _import_config, app
from edray.config import load_config

ROOT = Path(__file__).resolve().parents[2]
JOBS = ROOT / "jobs"
JOB_FILES = sorted(JOBS.glob("**/*.yaml"))
RAY_PREFIX = ["ray", "job", "submit", "--working-dir", ".", "--"]

# `edray <command>` -> the STAGE_CONFIGS key its --config is validated against (others: the command's name).
COMMAND_STAGE = {"world generate": "world", "world pretrain": "world_pretrain", "quickstart": "run"}


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(ROOT)) for p in paths]


def header_commands(path: Path) -> list[list[str]]:
    """The commands in the leading comment block: each comment line that starts with `edray` or `ray`."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text.startswith(("edray ", "ray ")):
            out.append(shlex.split(text))
    return out


def resolve_command(argv: list[str]) -> tuple[str, Any, list[str]]:
    """Walk ``edray a b ...`` down the typer app to the leaf command.

    Returns:
        (the command's path such as "world generate", the click command, its remaining arguments).
    """
    assert argv and argv[0] == "edray", f"command must start with `edray`: {argv}"
    # typer builds its commands on its own copy of click: groups are recognised by their `commands`.
    cmd: Any = typer.main.get_command(app)
    names: list[str] = []
    args = argv[1:]
    while hasattr(cmd, "commands"):
        assert args, f"`{' '.join(argv)}` names a command group, not a command"
        sub = cmd.commands.get(args[0])
        assert sub is not None, f"`edray {' '.join(names + [args[0]])}` is not a command; known: {sorted(cmd.commands)}"
        names.append(args[0])
        cmd, args = sub, args[1:]
    return " ".join(names), cmd, args


def option_value(args: list[str], name: str) -> str | None:
    """The value of ``--name VALUE`` or ``--name=VALUE`` in ``args``."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    return None


def stage_of(command: str) -> str:
    stage = COMMAND_STAGE.get(command, command)
    assert stage in STAGE_CONFIGS, f"`edray {command}` has no registered config (stages: {sorted(STAGE_CONFIGS)})"
    return stage


def load_job(path: Path) -> tuple[str, list[str], BaseModel]:
    """(command path, its arguments, the validated config) of a job file."""
    commands = header_commands(path)
    assert commands, f"{path.name}: first lines must be comments giving the launch command"
    command, _, args = resolve_command(commands[0])
    stage = stage_of(command)
    return command, args, load_config(_import_config(STAGE_CONFIGS[stage]), path, section=stage)


def walk_models(model: BaseModel, where: str = "") -> list[tuple[str, BaseModel]]:
    """Every (dotted location, model) inside a config, the config itself first."""
    out = [(where or "<root>", model)]
    for name in type(model).model_fields:
        value = getattr(model, name)
        items = value if isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, BaseModel):
                loc = f"{where}{name}" + (f"[{i}]" if isinstance(value, list) else "")
                out += walk_models(item, loc + ".")
    return out


def test_jobs_folder_ships_an_example_per_stage() -> None:
    commands = {resolve_command(header_commands(p)[0])[0] for p in JOB_FILES if header_commands(p)}
    for needed in ("world generate", "world pretrain", "index", "serve", "diagnose", "select", "train", "evaluate", "run"):
        assert needed in commands, f"no jobs/*.yaml launches `edray {needed}`"


@pytest.mark.parametrize("path", JOB_FILES, ids=_ids(JOB_FILES))
def test_job_header_commands_are_real(path: Path) -> None:
    commands = header_commands(path)
    assert path.read_text(encoding="utf-8").startswith("# edray "), f"{path.name}: line 1 must be `# edray <command> ...`"
    assert len(commands) >= 2, f"{path.name}: expected a local command and a `ray job submit` command"
    local, ray = commands[0], commands[1]
    assert ray[: len(RAY_PREFIX)] == RAY_PREFIX, f"{path.name}: line 2 must start with `{' '.join(RAY_PREFIX)}`"
    assert ray[len(RAY_PREFIX):] == local, f"{path.name}: the Ray job must run the same command as the local line"

    command, cmd, args = resolve_command(local)
    rel = str(path.relative_to(ROOT))
    assert option_value(args, "--config") == rel, f"{path.name}: --config must name the file itself ({rel})"
    # The command parses the arguments as the real command line would: unknown options, missing required ones
    # (train's --student, world's --out) and bad values fail here.
    ctx = cmd.make_context(f"edray {command}", list(args))
    assert Path(ctx.params["config"]) == Path(rel)


@pytest.mark.parametrize("path", JOB_FILES, ids=_ids(JOB_FILES))
def test_job_validates_against_its_stage_config(path: Path) -> None:
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(raw, dict) and raw, f"{path.name}: expected a non-empty mapping"
    command, _, config = load_job(path)
    assert stage_of(command) not in raw, f"{path.name}: use the flat form, not a top-level `{stage_of(command)}:` section"
    # Every key the file sets survives validation (extra="forbid" already rejects unknown ones).
    assert set(raw) <= set(type(config).model_fields)


@pytest.mark.parametrize("path", JOB_FILES, ids=_ids(JOB_FILES))
def test_job_resources_are_consistent(path: Path) -> None:
    _, _, config = load_job(path)
    for where, model in walk_models(config):
        fields: dict[str, Any] = {n: getattr(model, n) for n in type(model).model_fields}
        if "actors" in fields and "num_cpus" in fields and None not in (fields["actors"], fields["num_cpus"]):
            assert fields["actors"] >= 1 and fields["actors"] * fields["num_cpus"] > 0, f"{path.name}: {where} reserves no CPUs"
        for key in ("num_workers", "num_replicas", "ingress_replicas"):
            if key in fields:
                assert fields[key] >= 1, f"{path.name}: {where}{key} must be at least 1"
        if "cpus_per_worker" in fields and not fields.get("use_gpu", False):
            assert fields["cpus_per_worker"] > 0, f"{path.name}: {where}cpus_per_worker must be positive on CPU"
        if "num_rows" in fields and "batch_size" in fields and "num_workers" in fields:
            assert fields["num_rows"] >= fields["batch_size"] * fields["num_workers"], f"{path.name}: fewer rows than one step"


def stage_plan(stage: str, config: Any, shape: Any) -> Any:
    """The resource plan a stage's job checks before it starts Ray work (None: the stage holds no Ray resources)."""
    from edray.index.sizing import size_index
    from edray.resources import Demand, ResourcePlan, workers_plan
    from edray.serve.job import serve_plan

    if stage == "index":
        return size_index(config, shape).plan
    if stage == "train":
        return workers_plan("train", config.num_workers, config.cpus_per_worker, 1.0 if config.use_gpu else 0.0)
    if stage == "world_pretrain":
        return workers_plan("pretrain", config.num_workers, config.cpus_per_worker)
    if stage == "serve":
        return serve_plan(config)
    if stage == "world":
        return ResourcePlan("world", [Demand("generation tasks", 1, config.pool.num_cpus, fields=("pool.num_cpus",))])
    return None


LOCAL_JOB_FILES = [p for p in JOB_FILES if "real" not in p.relative_to(ROOT).parts]


@pytest.mark.parametrize("path", LOCAL_JOB_FILES, ids=_ids(LOCAL_JOB_FILES))
def test_job_fits_a_two_cpu_machine(path: Path) -> None:
    """Every example outside jobs/real/ (GPU clusters) runs as written on a 2-core machine: its stage's own
    plan passes the check the job makes before it starts Ray work."""
    from edray.resources import ClusterShape, check_plan

    command, _, config = load_job(path)
    plan = stage_plan(stage_of(command), config, ClusterShape(cpus=2, gpus=0, node_cpus=2, node_gpus=0))
    if plan is not None:
        check_plan(plan, ClusterShape(cpus=2, gpus=0, node_cpus=2, node_gpus=0))


def test_quickstart_config_validates_as_a_run() -> None:
    from edray.pipeline.config import RunConfig

    cfg = load_config(RunConfig, QUICKSTART_CONFIG, section="run")
    assert cfg.arms and cfg.rounds >= 1
    assert cfg.task in (cfg.world.eval.target_tasks or [cfg.task])


def test_examples_chain_world_student_and_run_dir() -> None:
    """The world and student the first examples write are what the later ones read."""
    jobs = {p.stem: load_job(p) for p in JOB_FILES if p.parent == JOBS}
    world = option_value(jobs["world"][1], "--out")
    student = option_value(jobs["world_pretrain"][1], "--out")
    assert world and student

    index = jobs["index"][2]
    assert Path(index.pool).parent == Path(world)
    diagnose = jobs["diagnose"][2]
    assert Path(diagnose.validation).is_relative_to(Path(world) / "eval")
    evaluate = jobs["evaluate"][2]
    assert all(Path(t).is_relative_to(Path(world) / "eval") for t in evaluate.target)
    assert Path(evaluate.general).is_relative_to(Path(world) / "eval")
    assert evaluate.base.path == student

    serve = jobs["serve"][2]
    assert student in [m.path for m in serve.models]
    served = set(serve.served_names())
    assert diagnose.student.client.model in served and diagnose.teacher.model in served
    port = f":{serve.port}/"
    assert port in diagnose.student.client.base_url + "/" and port in diagnose.teacher.base_url + "/"

    train_args = jobs["train"][1]
    assert option_value(train_args, "--student") == student
    assert Path(option_value(train_args, "--pool") or "") == Path(index.pool)
    run_dirs = {option_value(jobs[name][1], "--run-dir") for name in ("index", "diagnose", "select", "train", "evaluate")}
    assert len(run_dirs) == 1, f"index → evaluate must share one --run-dir, got {run_dirs}"
    (run_dir,) = run_dirs
    assert Path(option_value(train_args, "--selection") or "").is_relative_to(Path(run_dir))
    assert all(Path(m.path).is_relative_to(Path(run_dir)) for m in evaluate.models if m.path)
