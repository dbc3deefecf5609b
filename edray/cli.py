"""The ``edray`` command line: one command per stage. Command bodies load, merge, validate and call
``job.run``; they hold no logic. Only commands that work are registered here.

Every stage command takes ``--config FILE``, ``--set a.b=value`` (repeatable), ``--run-dir DIR`` and
``--force``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import BaseModel
from rich.table import Table

from edray.config import ConfigError, describe_config, load_config
from edray.console import console, log_session
from edray.console import out as out_console

app = typer.Typer(
    name="edray",
    help=(
        "Error-driven tuning of multimodal models on Ray.\n\n"
        "index the supporting pool, diagnose the student's mistakes on a validation set, select the "
        "supporting samples that teach the missing skills, train (LoRA, full or SPIDER), evaluate gain "
        "and retention, serve the tuned student."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Read, validate and inspect datasets in any supported format.", no_args_is_help=True)
config_app = typer.Typer(help="Show stage configs with every field's description.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(config_app, name="config")
world_app = typer.Typer(help="The skills world: offline benchmark data with ground truth, and its teacher.", no_args_is_help=True)
app.add_typer(world_app, name="world")

err_console = console

# Options shared by every stage command.
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file.", exists=False)]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config field: --set a.b=value (repeatable)."),
]
RunDirOpt = Annotated[Optional[Path], typer.Option("--run-dir", help="Run directory (default: runs/<timestamp>).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Re-run even if the stage already completed with the same config and inputs.")]
VerboseOpt = Annotated[
    bool,
    typer.Option(
        "--verbose",
        "-v",
        help="Show Ray's, Ray Data's, Ray Train's, Serve's and vLLM's own output on the console; by default it goes to "
        "the run's logs/ folder and the console shows edray's progress, warnings and errors only.",
    ),
]

# Registry used by `edray config show`: stage name -> (config class import path).
STAGE_CONFIGS: dict[str, str] = {}


def register_config(stage: str, import_path: str) -> None:
    """Make ``edray config show <stage>`` know a stage's config class (``module:Class``)."""
    STAGE_CONFIGS[stage] = import_path


def _import_config(import_path: str) -> type[BaseModel]:
    import importlib

    module, _, name = import_path.partition(":")
    return getattr(importlib.import_module(module), name)


def load_stage_config(stage: str, config: Path | None, overrides: list[str] | None) -> BaseModel:
    """Load and validate a stage's config; print the problem and exit 2 on a config error."""
    cls = _import_config(STAGE_CONFIGS[stage])
    try:
        return load_config(cls, config, overrides or [], section=stage)
    except ConfigError as exc:
        err_console.print(f"[red]config error[/red]: {exc}", highlight=False, markup=True)
        raise typer.Exit(2) from None


@config_app.command("show")
def config_show(
    stage: Annotated[str, typer.Argument(help="Stage name; `edray config show --list` lists them.")] = "",
    config: ConfigOpt = None,
    set_: SetOpt = None,
    list_: Annotated[bool, typer.Option("--list", help="List the stages that have a config.")] = False,
) -> None:
    """Print a stage's resolved config (defaults, file, overrides) with every field's description."""
    if list_ or not stage:
        for name in sorted(STAGE_CONFIGS):
            out_console.print(name)
        return
    if stage not in STAGE_CONFIGS:
        err_console.print(f"unknown stage {stage!r}; stages with a config: {', '.join(sorted(STAGE_CONFIGS))}")
        raise typer.Exit(2)
    cfg = load_stage_config(stage, config, set_)
    table = Table(title=f"{stage} config", show_lines=False)
    table.add_column("field", style="bold")
    table.add_column("value")
    table.add_column("description")
    for key, value, desc in describe_config(cfg):
        table.add_row(key, value, desc)
    out_console.print(table)


# --- data ---------------------------------------------------------------------------------------------
register_config("data", "edray.data.config:ReadConfig")


@data_app.command("inspect")
def data_inspect(
    path: Annotated[Path, typer.Argument(help="A file or folder: Parquet, JSONL, LLaVA JSON (+ images), a Hugging Face save_to_disk folder, or Lance.")],
    kind: Annotated[Optional[str], typer.Option("--kind", help="support (supporting pool) or eval (evaluation samples, with answers). Default: from the config (support).")] = None,
    format_: Annotated[Optional[str], typer.Option("--format", "-f", help="auto, parquet, jsonl, llava, hf or lance. Default: auto (detected from the path).")] = None,
    quarantine_out: Annotated[Optional[Path], typer.Option("--quarantine-out", help="Write every quarantined record (source, position, field, reason, raw excerpt) to this Parquet file (.jsonl: JSON lines).")] = None,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    sample: Annotated[int, typer.Option("--sample", help="Valid rows to show.", min=0, max=100)] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print the summary as JSON instead of tables.")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="Exit with status 1 when any record is quarantined.")] = False,
) -> None:
    """Read a dataset, validate every record and summarize: format, counts, schema, a sample row, quarantine.

    Bad records (corrupt or oversized images, malformed conversations, missing answers, duplicate ids...) never stop the read: each is quarantined with its file, position, field and reason.

    Limits come from the `data` config (`edray config show data`), e.g. --set max_image_bytes=1000000.
    """
    import json

    from edray.data.job import inspect as inspect_data

    cfg = load_stage_config("data", config, set_)
    overrides = [f"{k}={v}" for k, v in (("kind", kind), ("format", format_)) if v is not None]
    if overrides:
        cfg = load_stage_config("data", config, (set_ or []) + overrides)
    try:
        summary = inspect_data(path, config=cfg, quarantine_out=quarantine_out, sample_rows=sample)
    except (FileNotFoundError, ValueError) as exc:
        err_console.print(f"[red]error[/red]: {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(2) from None
    if as_json:
        print(json.dumps(summary.to_dict(), indent=2, ensure_ascii=False, default=str))
    else:
        _print_inspect(summary)
    if strict and summary.quarantined:
        raise typer.Exit(1)


def _print_inspect(summary: "InspectSummary") -> None:  # noqa: F821
    import json

    out_console.print(f"[bold]{summary.path}[/bold]: format [cyan]{summary.format}[/cyan], kind {summary.kind}")
    out_console.print(f"valid: [green]{summary.valid}[/green]   quarantined: [{'red' if summary.quarantined else 'green'}]{summary.quarantined}[/]")
    out_console.print("\n[bold]schema[/bold]", highlight=False)
    out_console.print(summary.schema, highlight=False, markup=False)
    for row in summary.sample:
        out_console.print("\n[bold]sample row[/bold]")
        out_console.print(json.dumps(row, indent=1, ensure_ascii=False, default=str)[:4000], highlight=False, markup=False)
    if summary.quarantined:
        table = Table(title="quarantined by reason")
        table.add_column("reason")
        table.add_column("records", justify="right")
        for reason, n in summary.by_reason.items():
            table.add_row(reason, str(n))
        out_console.print(table)
        ex = Table(title="examples")
        for col in ("source", "position", "field", "reason"):
            ex.add_column(col, overflow="fold")
        for row in summary.quarantine_examples:
            ex.add_row(*(str(row[c]) for c in ("source", "position", "field", "reason")))
        out_console.print(ex)
        if summary.quarantine_out:
            out_console.print(f"quarantine written to {summary.quarantine_out}")
        else:
            out_console.print("write all quarantined records with --quarantine-out FILE")


register_config("world", "edray.world.config:WorldConfig")


@world_app.command("generate")
def world_generate(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the world into.")],
    pool_size: Annotated[Optional[int], typer.Option("--pool-size", help="Supporting-pool rows (pool.pool_size).")] = None,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Pool seed (pool.seed).")] = None,
    mix: Annotated[
        Optional[list[str]],
        typer.Option("--mix", help="Weight of a skill or source task in the pool: --mix attribute_binding=0.005 (repeatable)."),
    ] = None,
    lance: Annotated[bool, typer.Option("--lance", help="Also write the pool as a Lance dataset.")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    force: ForceOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Generate a skills world: supporting pool (Ray Data), target-task splits and the general suite.

    Ray's own output goes to logs/ beside the world folder (--verbose shows it)."""
    from edray.world import job

    overrides = list(set_ or [])
    if pool_size is not None:
        overrides.append(f"pool.pool_size={pool_size}")
    if seed is not None:
        overrides.append(f"pool.seed={seed}")
    overrides += [f"pool.mix.{item}" for item in mix or []]
    if lance:
        overrides.append("pool.formats=[parquet, lance]")
    cfg = load_stage_config("world", config, overrides)
    with log_session(out.parent / "logs", f"world-{out.name}", verbose):
        path = job.run(cfg, out, force=force)
    out_console.print(f"world written to {path}")


register_config("world_pretrain", "edray.world.pretrain:PretrainConfig")


@world_app.command("pretrain")
def world_pretrain(
    out: Annotated[Path, typer.Option("--out", help="Student folder to write (a Hugging Face LLaVA folder).")],
    ci: Annotated[bool, typer.Option("--ci", help="Start from the CI-sized recipe (small student, ~2 minutes).")] = False,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    force: ForceOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Pretrain the world's student from random weights on a generic mix with designed skill gaps
    (Ray Train). Cached: the same config returns the existing folder at once. Ray's own output goes to
    logs/ beside the student folder (--verbose shows it)."""
    import json as _json

    from edray.world import pretrain

    overrides = list(set_ or [])
    if ci:
        base = _flatten(pretrain.PretrainConfig.ci().model_dump(mode="json"))
        overrides = [f"{k}={_json.dumps(v)}" for k, v in base.items()] + overrides
    cfg = load_stage_config("world_pretrain", config, overrides)
    with log_session(out.parent / "logs", f"pretrain-{out.name}", verbose):
        path = pretrain.pretrain_student(cfg, out, force=force)
    out_console.print(f"student written to {path}")
    log = _json.loads((path / pretrain.PRETRAIN_LOG).read_text())
    general = log.get("general_accuracy") or {}
    if "check_a" in general:
        from edray.world.checks import format_student_gaps

        out_console.print(f"general suite ({cfg.eval_size} rows) and the world's check (a):", highlight=False)
        out_console.print(format_student_gaps(general["check_a"], general.get("counts")), highlight=False, markup=False)


@world_app.command("check")
def world_check(
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Run folder of `edray run` (round_0 is checked).")],
    arm_oracle: Annotated[Optional[str], typer.Option("--arm-oracle", help="Model name of the oracle arm in the evaluate stage.")] = None,
    arm_random: Annotated[Optional[str], typer.Option("--arm-random", help="Model name of the random arm in the evaluate stage.")] = None,
    gap_skill: Annotated[
        Optional[list[str]], typer.Option("--gap-skill", help="A designed gap skill (repeatable; default: the student's pretraining mix).")
    ] = None,
) -> None:
    """The five checks of a skills-world run (student gaps, base errors, located steps, selection precision,
    oracle headroom): prints them and writes <run-dir>/checks/checks.json and checks.parquet. Exit code 1
    when a check does not pass, 2 when an input is missing."""
    from edray.world import checks

    try:
        inputs = checks.run_dir_inputs(run_dir)
    except FileNotFoundError as exc:
        err_console.print(f"world check: {exc}", highlight=False, markup=False)
        raise typer.Exit(2) from exc
    source = inputs.pop("gap_source")
    if gap_skill:
        inputs["gap_skills"], source = sorted(gap_skill), "--gap-skill"
    out_console.print(f"gap skills: {', '.join(inputs['gap_skills']) or 'none'} (from {source})", highlight=False, markup=False)
    results = checks.run_checks(run_dir / "checks", **inputs, oracle_model=arm_oracle, random_model=arm_random)
    out_console.print(checks.format_checks(results), highlight=False, markup=False)
    out_console.print(f"written to {run_dir / 'checks' / checks.CHECKS_JSON}", highlight=False, markup=False)
    if not all(r.passed for r in results):
        raise typer.Exit(1)


def _flatten(data: dict, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (dict-valued leaves such as mixes stay whole)."""
    out: dict = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "mix":
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


# --- index ---------------------------------------------------------------------------------------------
register_config("index", "edray.index.config:IndexConfig")


@app.command("index")
def index(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    force: ForceOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Annotate the supporting pool's skills with the teacher, embed it and store it in LanceDB
    (vector + BM25 indexes). Incremental: re-running on a grown pool indexes only the new rows."""
    from edray.index import job
    from edray.rundir import new_run_dir

    cfg = load_stage_config("index", config, set_)
    run_dir = run_dir or new_run_dir()
    with log_session(run_dir / "logs", "index", verbose):
        path = job.run(cfg, run_dir, force=force)
    out_console.print(f"index written to {path}")


# --- diagnose / select ---------------------------------------------------------------------------
register_config("diagnose", "edray.diagnose.config:DiagnoseConfig")
register_config("select", "edray.select.config:SelectConfig")


@app.command("diagnose")
def diagnose(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    force: ForceOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Find the student's mistakes on the validation set: answer in steps, locate the first wrong step
    (answer switch), name the missing skill, cluster skills into capability gaps."""
    from edray.diagnose import job
    from edray.rundir import new_run_dir

    cfg = load_stage_config("diagnose", config, set_)
    run_dir = run_dir or new_run_dir()
    with log_session(run_dir / "logs", "diagnose", verbose):
        path = job.run(cfg, run_dir, force=force)
    out_console.print(f"diagnose written to {path}")


@app.command("select")
def select(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    force: ForceOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Select supporting samples for the missing skills (BM25, dense or hybrid), filled to a budget with
    provenance; or a baseline at the same budget (random, insta, full, validation)."""
    from edray.rundir import new_run_dir
    from edray.select import job

    cfg = load_stage_config("select", config, set_)
    run_dir = run_dir or new_run_dir()
    with log_session(run_dir / "logs", "select", verbose):
        path = job.run(cfg, run_dir, force=force)
    out_console.print(f"selection written to {path}")


# --- train ---------------------------------------------------------------------------------------
register_config("train", "edray.train.config:TrainConfig")


@app.command("train")
def train(
    student: Annotated[Path, typer.Option("--student", help="Student model folder (transformers, safetensors, with its processor).")],
    selection: Annotated[Path, typer.Option("--selection", help="Selection Parquet with an `id` column (the select stage's selection.parquet).")],
    pool: Annotated[Optional[Path], typer.Option("--pool", help="Supporting pool (Parquet or Lance) to join images and messages from by id.")] = None,
    round_index: Annotated[int, typer.Option("--round", help="Round this training belongs to (runs/<run>/round_<k>/train).")] = 0,
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    force: ForceOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Fine-tune the student on the selected supporting samples with Ray Train: LoRA, full (projector +
    last N layers) or SPIDER; resumable checkpoints; exports an adapter or model folder."""
    from edray.rundir import new_run_dir
    from edray.train import job

    cfg = load_stage_config("train", config, set_)
    run_dir = run_dir or new_run_dir()
    try:
        with log_session(run_dir / "logs", "train", verbose):
            path = job.run(cfg, run_dir, student, selection, pool, round_index=round_index, force=force)
    except ValueError as exc:
        err_console.print(f"[red]train input error[/red]: {exc}", highlight=False)
        raise typer.Exit(2) from None
    out_console.print(f"trained model written to {path}")


# --- evaluate / report ---------------------------------------------------------------------------
register_config("evaluate", "edray.evaluate.config:EvaluateConfig")


@app.command("evaluate")
def evaluate(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    force: ForceOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """Measure target accuracy and general retention of the base student, each tuned student and each
    baseline arm, per task and per skill, with the combined score (harmonic mean)."""
    from edray.evaluate import job
    from edray.rundir import new_run_dir

    cfg = load_stage_config("evaluate", config, set_)
    run_dir = run_dir or new_run_dir()
    with log_session(run_dir / "logs", "evaluate", verbose):
        path = job.run(cfg, run_dir, force=force)
    out_console.print(f"evaluation written to {path}")


@app.command("report")
def report(
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Run directory to report on.")],
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder to write report.html into (default: <run-dir>/report).")] = None,
) -> None:
    """Write one static HTML report of a run: capability gaps, before/after per task and skill, baselines,
    retention vs. gain, training curves and browsable errors. Sections without data say so."""
    from edray.report.job import write_report

    try:
        path = write_report(run_dir, out)
    except FileNotFoundError as exc:
        err_console.print(f"[red]error[/red]: {exc}", highlight=False)
        raise typer.Exit(2) from None
    out_console.print(f"report written to {path}")


# --- serve ---------------------------------------------------------------------------------------
register_config("serve", "edray.serve.config:ServeConfig")


@app.command("serve")
def serve(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    log_dir: Annotated[Path, typer.Option("--log-dir", help="Folder for Ray's, Serve's and vLLM's own output.")] = Path("runs/serve/logs"),
    verbose: VerboseOpt = False,
) -> None:
    """Serve the student, its LoRA adapters (by name) and the teacher behind one OpenAI-compatible
    Ray Serve application until Ctrl-C. Clients send the key in the variable `api_key_env` names."""
    from edray.serve import job

    cfg = load_stage_config("serve", config, set_)
    with log_session(log_dir, "serve", verbose):
        job.run(cfg)


register_config("run", "edray.pipeline.config:RunConfig")

QUICKSTART_CONFIG = Path(__file__).resolve().parent / "pipeline" / "quickstart.yaml"


@app.command("run")
def run_pipeline(
    config: ConfigOpt = None,
    set_: SetOpt = None,
    run_dir: RunDirOpt = None,
    force: ForceOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """The whole method: world → student → index → rounds of diagnose → select → train → evaluate → report.

    Each arm (select → train → evaluate) runs as a Ray Tune trial, as many at once as the cluster holds;
    <run-dir>/arms.parquet has one row per arm. Every stage is skipped when it already finished with the
    same config and inputs, so a killed run started again continues from the last finished stage and
    arm; a failed arm is recorded, the others finish, and the command then exits with an error.
    """
    from edray.pipeline import job
    from edray.rundir import new_run_dir

    cfg = load_stage_config("run", config, set_)
    run_dir = run_dir or new_run_dir()
    with log_session(run_dir / "logs", "run", verbose):
        out = job.run(cfg, run_dir, force=force)
    out_console.print(f"run finished: {out}  (report: {out / 'report' / 'report.html'})")


@app.command("quickstart")
def quickstart(
    run_dir: Annotated[Path, typer.Option("--run-dir", help="Run directory.")] = Path("runs/quickstart"),
    set_: SetOpt = None,
    force: ForceOpt = False,
    verbose: VerboseOpt = False,
) -> None:
    """`edray run` on the skills world with the shipped quickstart config (about 10 minutes on 2 CPU cores):
    a generic student with known gaps, its mistakes diagnosed, targeted data selected, a tuned student,
    its evaluation against a random baseline, and the HTML report."""
    from edray.pipeline import job

    cfg = load_stage_config("run", QUICKSTART_CONFIG, set_)
    with log_session(run_dir / "logs", "quickstart", verbose):
        out = job.run(cfg, run_dir, force=force)
    out_console.print(f"quickstart finished: {out}  (report: {out / 'report' / 'report.html'})")


def main() -> None:
    """Console-script entry point: known failures print one message (no traceback) and exit non-zero."""
    from edray.pipeline.job import ArmsFailed
    from edray.resources import ResourceError, StallError

    try:
        app()
    except ConfigError as exc:
        err_console.print(f"config error: {exc}", highlight=False, markup=False)
        sys.exit(2)
    except ResourceError as exc:
        err_console.print(f"resource error: {exc}", highlight=False, markup=False)
        sys.exit(2)
    except StallError as exc:
        err_console.print(f"stalled: {exc}", highlight=False, markup=False)
        sys.exit(1)
    except ArmsFailed as exc:
        err_console.print(f"arms failed: {exc}", highlight=False, markup=False)
        sys.exit(1)


if __name__ == "__main__":
    main()
