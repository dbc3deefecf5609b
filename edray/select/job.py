"""The select stage: supporting samples that teach the missing skills, filled to a budget (docs/method.md §1
step 5 and §3).

Inputs:
    - the index stage's LanceDB table (``config.index_dir``, default ``runs/<run>/index``);
    - the diagnose stage of the same round (``gaps.parquet``, ``errors.parquet``, and its validation set);
    - the target task's evaluation splits for the contamination guard (``config.contamination.evaluation``).
Output, in ``runs/<run>/round_<k>/select/``:
    - ``selection.parquet`` (``SELECTION_SCHEMA``): selected ids with provenance (error ids, gap, skill
      phrase, query, retrieval mode, score, rank), read by the train stage;
    - ``manifest.json`` (counts: selected, targeted, replay, shortfall fill, contaminated excluded) and
      ``_SUCCESS``.

Run it with::

    edray select --config jobs/select.yaml --run-dir runs/x [--set mode=hybrid] [--set strategy=random]

The same command builds the baselines at the same budget (``strategy``: random, insta, full, validation).
Selection makes no model calls except embedding queries (dense, hybrid) and pool instructions (insta).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from edray.index.core import instruction_and_answer
from edray.data.parquet_rows import read_parquet_rows
from edray.rundir import Stage, StageDir, run_stage
from edray.schemas import ERRORS, GAPS, SELECTION
from edray.select import core
from edray.select.config import SelectConfig

log = logging.getLogger(__name__)

STAGE = "select"
REPLAY = "replay"
SHORTFALL = "shortfall"
_ID_CHUNK = 512


# --- reading ---------------------------------------------------------------------------------------


def _read_parquet_rows(path: str | Path, columns: Sequence[str]) -> list[dict[str, Any]]:
    return read_parquet_rows(path, columns, "table", columns=columns)


def _pool_ids(table: Any) -> list[str]:
    return [str(v) for v in table.to_lance().to_table(columns=["id"]).column("id").to_pylist()]


def _fetch(table: Any, ids: Sequence[str], columns: Sequence[str]) -> list[dict[str, Any]]:
    """Rows of the LanceDB table by id (chunked ``IN`` filters)."""
    cols = [c for c in columns if c in table.schema.names]
    ds = table.to_lance()
    out: list[dict[str, Any]] = []
    for i in range(0, len(ids), _ID_CHUNK):
        chunk = ids[i : i + _ID_CHUNK]
        quoted = ", ".join("'" + str(x).replace("'", "''") + "'" for x in chunk)
        out.extend(ds.to_table(columns=cols, filter=f"id IN ({quoted})").to_pylist())
    return out


def _guard_item(row: dict[str, Any]) -> core.GuardItem:
    hashes = [h for h in (core.average_hash(b) for b in (row.get("images") or [])) if h is not None]
    text = row.get("instruction")
    if text is None:
        text = instruction_and_answer(row.get("messages"))[0]
    return core.GuardItem(str(row["id"]), hashes, core.instruction_tokens(text or ""))


class Guard:
    """The contamination guard over one target task's evaluation samples, checking candidates lazily."""

    def __init__(self, config: SelectConfig, table: Any, evaluation: list[dict[str, Any]]) -> None:
        self.config = config.contamination
        self.table = table
        self.evaluation = [_guard_item(r) for r in evaluation] if self.config.enabled else []
        self.checked: set[str] = set()
        self.excluded: dict[str, str] = {}
        self.has_images = "images" in table.schema.names

    def check(self, ids: Iterable[str]) -> set[str]:
        """Check ``ids`` not checked yet; returns every id found contaminated so far."""
        todo = [i for i in dict.fromkeys(ids) if i not in self.checked]
        if todo and self.evaluation:
            rows = _fetch(self.table, todo, ["id", "instruction", "images", "messages"])
            found = core.find_contaminated(
                [_guard_item(r) for r in rows],
                self.evaluation,
                self.config.max_hash_distance,
                self.config.min_instruction_similarity,
                self.config.rule,
            )
            self.excluded.update(found)
        self.checked.update(todo)
        return set(self.excluded)


def _draw(pool: Sequence[str], n: int, seed: int, taken: set[str], guard: Guard) -> list[str]:
    """``n`` uniform draws from the pool, none taken or contaminated (fewer if the pool runs out)."""
    out: list[str] = []
    attempt = 0
    while len(out) < n:
        blocked = taken | set(out) | set(guard.excluded)
        batch = core.sample_uniform(pool, n - len(out), seed + 7919 * attempt, exclude=blocked)
        if not batch:
            break
        bad = guard.check(batch)
        out.extend(b for b in batch if b not in bad)
        attempt += 1
    return out


# --- error-driven retrieval -------------------------------------------------------------------------


def _units(config: SelectConfig, gaps: list[dict[str, Any]], errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What is retrieved for: gaps, or single errors; each with its weight, queries and provenance."""
    by_error = {e["error_id"]: e for e in errors}
    units = []
    if config.unit == "gap":
        for g in sorted(gaps, key=lambda g: g["gap_id"]):
            if config.query == "skill":
                queries = [g["skill"]]
            elif config.query == "phrases":
                queries = list(g["phrases"])
            else:
                queries = [by_error[e]["step_text"] for e in g["error_ids"] if by_error.get(e, {}).get("step_text")]
            units.append(
                {
                    "key": f"gap:{g['gap_id']}",
                    "weight": float(g["error_count"]),
                    "queries": list(dict.fromkeys(q for q in queries if q)),
                    "prov": core.Provenance(int(g["gap_id"]), g["skill"], list(g["error_ids"]), None, config.mode),
                }
            )
    else:
        for e in sorted(errors, key=lambda e: e["error_id"]):
            query = e["skill"] if config.query != "step" else e["step_text"]
            if not query:
                continue
            units.append(
                {
                    "key": f"error:{e['error_id']}",
                    "weight": 1.0,
                    "queries": [query],
                    "prov": core.Provenance(e["gap_id"], e["skill"], [e["error_id"]], None, config.mode),
                }
            )
    for u in units:
        u["prov"].query = " | ".join(u["queries"])
    return [u for u in units if u["queries"]]


def _retrieve(handle: Any, config: SelectConfig, query: str, k: int) -> list[core.Candidate]:
    from edray.index.search import search

    # Full-text query syntax would read punctuation in a step ("column.", "A:") as operators.
    text = " ".join(re.sub(r"[^\w\s'-]", " ", query).split())
    hits = search(
        handle.table, text, mode=config.mode, k=k, embed=handle.embed, metric=handle.metric,
        rrf_k=config.rrf_k, nprobes=handle.nprobes, candidates=max(config.candidates, k), columns=["id"],
    )
    return [
        core.Candidate(str(i), float(s), int(r))
        for i, s, r in zip(hits.column("id").to_pylist(), hits.column("score").to_pylist(), hits.column("rank").to_pylist())
    ]


def select_error_driven(
    handle: Any, config: SelectConfig, units: list[dict[str, Any]], budget: int, guard: Guard, pool_size: int
) -> tuple[list[core.Pick], dict[str, core.Provenance]]:
    """Retrieve per unit, guard, and fill the targeted budget; retrieval widens while the fill is short."""
    quotas = core.allocate_budget(budget, {u["key"]: u["weight"] for u in units}, config.allocation)
    ks = {
        u["key"]: min(config.max_candidates, pool_size, max(config.min_candidates, math.ceil(quotas[u["key"]] * config.overfetch)))
        for u in units
    }
    while True:
        ranked: dict[str, list[core.Candidate]] = {}
        exhausted = True
        for u in units:
            k = ks[u["key"]]
            rankings = [_retrieve(handle, config, q, k) for q in u["queries"]]
            ranked[u["key"]] = core.fuse_rankings(rankings, config.rrf_k)
            if any(len(r) >= k for r in rankings) and k < min(config.max_candidates, pool_size):
                exhausted = False
        excluded = guard.check(c.id for cands in ranked.values() for c in cands)
        picks = core.fill_budget(ranked, quotas, budget, exclude=excluded)
        if len(picks) >= budget or exhausted:
            break
        ks = {key: min(config.max_candidates, pool_size, k * 2) for key, k in ks.items()}
    return picks, {u["key"]: u["prov"] for u in units}


# --- baselines ---------------------------------------------------------------------------------------


def _embed_batched(embed: Any, texts: list[str], batch: int = 256) -> np.ndarray:
    parts = [embed(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    return np.concatenate(parts) if parts else np.zeros((0, 1), dtype=np.float32)


_INSTRUCTION_VECTORS: dict[tuple[Any, ...], tuple[list[str], np.ndarray]] = {}


def _pool_instruction_vectors(handle: Any) -> tuple[list[str], np.ndarray]:
    """The pool's ids and embedded instructions, kept per process and table version: the INSTA arms of a
    grid that one process selects for one after another embed the pool once."""
    info = getattr(handle, "info", {}) or {}
    key = (info.get("uri"), info.get("table"), handle.table.version, info.get("embed_model"), info.get("max_seq_length"))
    if key not in _INSTRUCTION_VECTORS:
        pool = handle.table.to_lance().to_table(columns=["id", "instruction"]).to_pylist()
        ids = [str(r["id"]) for r in pool]
        _INSTRUCTION_VECTORS.clear()
        _INSTRUCTION_VECTORS[key] = (ids, _embed_batched(handle.embed, [r["instruction"] or "" for r in pool]))
    return _INSTRUCTION_VECTORS[key]


def select_insta(handle: Any, budget: int, validation: list[dict[str, Any]], guard: Guard) -> list[core.Pick]:
    """INSTA-style baseline: pool samples whose instruction is most similar to the target task's."""
    ids, vectors = _pool_instruction_vectors(handle)
    targets = _embed_batched(handle.embed, [instruction_and_answer(r["messages"])[0] for r in validation])
    ranked = core.rank_by_instruction_similarity(ids, vectors, targets)
    picks: list[core.Pick] = []
    cursor = 0
    while len(picks) < budget and cursor < len(ranked):
        window = ranked[cursor : cursor + max(2 * (budget - len(picks)), 64)]
        cursor += len(window)
        bad = guard.check(c.id for c in window)
        for c in window:
            if c.id not in bad and len(picks) < budget:
                picks.append(core.Pick(c.id, "insta", c.score, c.rank))
    return picks


# --- the stage ---------------------------------------------------------------------------------------


def stage(config: SelectConfig, run_dir: str | Path) -> Stage:
    """The select stage's identity: ``round_<k>/select``, keyed by the config, the index, the diagnosis and
    the evaluation sets the contamination guard reads.

    Raises:
        FileNotFoundError: the index or the diagnose stage has not completed.
    """
    run_dir = Path(run_dir)
    index_dir, diagnose_dir = _input_dirs(config, run_dir)
    diag_manifest = json.loads((diagnose_dir / "manifest.json").read_text())
    eval_paths = [diag_manifest["config"]["validation"], *config.contamination.evaluation]
    return Stage(StageDir(run_dir, STAGE, config.round), config, inputs=[index_dir, diagnose_dir, *eval_paths])


def _input_dirs(config: SelectConfig, run_dir: Path) -> tuple[Path, Path]:
    from edray.index.search import INDEX_INFO

    index_dir = Path(config.index_dir) if config.index_dir else run_dir / "index"
    diagnose_dir = Path(config.diagnose_dir) if config.diagnose_dir else StageDir(run_dir, "diagnose", config.round).path
    if not (index_dir / INDEX_INFO).is_file():
        raise FileNotFoundError(f"no completed index at {index_dir}; run `edray index` first")
    if not (diagnose_dir / "_SUCCESS").exists():
        raise FileNotFoundError(f"no completed diagnose stage at {diagnose_dir}; run `edray diagnose` first")
    return index_dir, diagnose_dir


def run(config: SelectConfig, run_dir: str | Path, force: bool = False) -> Path:
    """Run the select stage (skipped when a completed output has the same config and inputs).

    Args:
        config: the validated stage config.
        run_dir: the run directory; output goes to ``round_<k>/select``.
        force: re-run even when a completed output matches.

    Returns:
        The stage folder.

    Raises:
        FileNotFoundError: the index or the diagnose stage has not completed.
    """
    from edray.index.search import open_index

    run_dir = Path(run_dir)
    index_dir, diagnose_dir = _input_dirs(config, run_dir)
    diag_manifest = json.loads((diagnose_dir / "manifest.json").read_text())
    validation_path = diag_manifest["config"]["validation"]

    st = stage(config, run_dir)

    def compute(tmp: Path) -> None:
        handle = open_index(index_dir)
        pool = _pool_ids(handle.table)
        budget = core.resolve_budget(config.budget, config.budget_fraction, len(pool))
        task = diag_manifest["config"].get("task")
        validation = [
            r for r in _read_parquet_rows(validation_path, ["id", "source_task", "images", "messages"])
            if task is None or r["source_task"] == task
        ]
        evaluation = list(validation)
        for path in config.contamination.evaluation:
            evaluation.extend(_read_parquet_rows(path, ["id", "images", "messages"]))
        guard = Guard(config, handle.table, evaluation)

        provenance: dict[str, core.Provenance] = {}
        source = "pool"
        n_replay = core.replay_count(budget, config.replay_share) if config.strategy != "validation" else 0
        targeted_budget = budget - n_replay
        counts: dict[str, int] = {}
        if config.strategy == "error_driven":
            gaps = pq.read_table(diagnose_dir / GAPS).to_pylist()
            errors = pq.read_table(diagnose_dir / ERRORS).to_pylist()
            units = _units(config, gaps, errors)
            picks, provenance = select_error_driven(handle, config, units, targeted_budget, guard, len(pool))
            counts["targeted"] = len(picks)
            counts["units"] = len(units)
        elif config.strategy == "random":
            picks = [core.Pick(i, "random", None, None) for i in _draw(pool, targeted_budget, config.seed, set(), guard)]
        elif config.strategy == "insta":
            picks = select_insta(handle, targeted_budget, validation, guard)
        elif config.strategy == "full":
            bad = guard.check(pool)
            picks = [core.Pick(i, "full", None, None) for i in sorted(pool) if i not in bad]
            n_replay = 0
        else:
            source = "validation"
            ids = sorted(str(r["id"]) for r in validation)
            picks = [core.Pick(i, "validation", None, None) for i in ids[:budget]]

        taken = {p.id for p in picks}
        if source == "pool" and config.strategy != "full":
            short = targeted_budget - len(picks)
            if short > 0 and config.fill_shortfall == "random":
                fill = _draw(pool, short, config.seed + 1, taken, guard)
                picks += [core.Pick(i, SHORTFALL, None, None) for i in fill]
                taken.update(fill)
                counts["shortfall_fill"] = len(fill)
            replay = _draw(pool, n_replay, config.seed + 2, taken, guard)
            picks += [core.Pick(i, REPLAY, None, None) for i in replay]
            counts["replay"] = len(replay)
        table = _selection_table(picks, provenance, config, source)

        pq.write_table(table, tmp / SELECTION)
        st.dir.counts.update(
            {
                "pool": len(pool),
                "budget": budget,
                "selected": table.num_rows,
                "contaminated_excluded": len(guard.excluded),
                "contamination_checked": len(guard.checked),
                **counts,
            }
        )
        per_gap: dict[str, int] = {}
        for p in picks:
            per_gap[p.gap] = per_gap.get(p.gap, 0) + 1
        st.dir.metrics.update(
            {"per_unit": per_gap, "contamination_examples": dict(list(guard.excluded.items())[:20]),
             "images_checked": guard.has_images}
        )

    return run_stage(st, compute, force=force)


def _selection_table(
    picks: list[core.Pick], provenance: dict[str, core.Provenance], config: SelectConfig, source: str
) -> pa.Table:
    """Provenance for baselines and fills: the draw that chose the row is the retrieval mode."""
    prov = dict(provenance)
    for name in (REPLAY, SHORTFALL, "random", "insta", "full", "validation"):
        prov.setdefault(name, core.Provenance(None, None, [], None, name))
    strategy = config.strategy
    return core.selection_table(picks, prov, strategy, config.round, source=source)
