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
from rich.console import Console
from rich.table import Table

from edray.config import ConfigError, describe_config, load_config

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

console = Console()
err_console = Console(stderr=True)

# Options shared by every stage command.
ConfigOpt = Annotated[Optional[Path], typer.Option("--config", "-c", help="YAML config file.", exists=False)]
SetOpt = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config field: --set a.b=value (repeatable)."),
]
RunDirOpt = Annotated[Optional[Path], typer.Option("--run-dir", help="Run directory (default: runs/<timestamp>).")]
ForceOpt = Annotated[bool, typer.Option("--force", help="Re-run even if the stage already completed with the same config and inputs.")]

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
            console.print(name)
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
    console.print(table)

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
) -> None:
    """Generate a skills world: supporting pool (Ray Data), target-task splits and the general suite."""
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
    path = job.run(cfg, out, force=force)
    console.print(f"world written to {path}")


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except ConfigError as exc:
        err_console.print(f"config error: {exc}", highlight=False, markup=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
