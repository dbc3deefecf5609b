"""Pure pieces of the select stage (docs/method.md §1 step 5 and §3): budget, filling, fusion, contamination.

Nothing here touches Ray, disk or the network. The job retrieves ranked candidates per gap from the
index and hands them here.
"""

from __future__ import annotations

import io
import math
import random
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from edray.index.core import rrf_fuse
from edray.schemas import SELECTION_SCHEMA


def resolve_budget(budget: int | None, fraction: float | None, pool_size: int) -> int:
    """The number of samples to select: an absolute count or a fraction of the pool, capped at the pool.

    Raises:
        ValueError: both or neither of ``budget`` and ``fraction`` are given.
    """
    if (budget is None) == (fraction is None):
        raise ValueError("give exactly one of budget and budget_fraction")
    n = budget if budget is not None else int(round(fraction * pool_size))  # type: ignore[operator]
    return max(0, min(int(n), pool_size))


def replay_count(budget: int, share: float) -> int:
    """Samples of the budget drawn uniformly from the pool (docs/method.md §3, replay)."""
    return max(0, min(budget, int(round(budget * share))))


def allocate_budget(budget: int, weights: Mapping[str, float], mode: str = "proportional") -> dict[str, int]:
    """Split a budget across gaps, summing exactly to ``budget``.

    ``proportional`` follows the weights (error counts, docs/method.md §3: "budget allocated across skills by
    how often each caused an error") by the largest-remainder method; ``uniform`` splits evenly. Left-over
    units go to the largest remainders, ties to the larger weight, then to the earlier key.

    Args:
        budget: units to allocate (≥ 0).
        weights: gap → weight (≥ 0); all-zero weights allocate uniformly.
        mode: ``proportional`` or ``uniform``.

    Returns:
        gap → units, in the order of ``weights``.

    Raises:
        ValueError: negative budget or weight, or an unknown mode.
    """
    if budget < 0:
        raise ValueError(f"budget must be >= 0, got {budget}")
    if mode not in ("proportional", "uniform"):
        raise ValueError(f"unknown allocation {mode!r}; use proportional or uniform")
    keys = list(weights)
    if not keys:
        return {}
    if any(w < 0 or not math.isfinite(w) for w in weights.values()):
        raise ValueError(f"weights must be finite and >= 0: {dict(weights)}")
    w = [1.0] * len(keys) if mode == "uniform" or sum(weights.values()) == 0 else [float(weights[k]) for k in keys]
    total = sum(w)
    exact = [budget * x / total for x in w]
    base = [int(math.floor(e)) for e in exact]
    left = budget - sum(base)
    order = sorted(range(len(keys)), key=lambda i: (-(exact[i] - base[i]), -w[i], i))
    for i in order[:left]:
        base[i] += 1
    return {k: base[i] for i, k in enumerate(keys)}


@dataclass(frozen=True)
class Candidate:
    """A retrieved supporting sample for one gap: its id, retrieval score and 1-based rank."""

    id: str
    score: float
    rank: int


@dataclass(frozen=True)
class Pick:
    """A selected sample and the gap that chose it."""

    id: str
    gap: str
    score: float
    rank: int


def fill_budget(
    ranked: Mapping[str, Sequence[Candidate]],
    quotas: Mapping[str, int],
    budget: int,
    exclude: frozenset[str] | set[str] = frozenset(),
) -> list[Pick]:
    """Fill the budget from each gap's ranked candidates, deduplicated.

    First pass: gaps take turns, best rank first, each up to its quota; an id already taken (or excluded)
    is skipped and the gap moves to its next candidate. Second pass: quota a gap could not use (too few
    distinct candidates) goes to gaps that still have candidates, again in turns. The result has
    ``min(budget, distinct candidates)`` picks.

    Args:
        ranked: gap → candidates in rank order.
        quotas: gap → share of the budget (from :func:`allocate_budget`); gaps missing here get 0.
        budget: total picks wanted.
        exclude: ids never picked (contaminated, or already selected elsewhere).

    Returns:
        Picks in the order they were taken.
    """
    taken: set[str] = set(exclude)
    picks: list[Pick] = []
    cursor = {g: 0 for g in ranked}
    need = {g: int(quotas.get(g, 0)) for g in ranked}

    def next_candidate(g: str) -> Candidate | None:
        cands = ranked[g]
        while cursor[g] < len(cands):
            c = cands[cursor[g]]
            cursor[g] += 1
            if c.id not in taken:
                return c
        return None

    for first_pass in (True, False):
        active = [g for g in ranked if (need[g] > 0 if first_pass else True)]
        while active and len(picks) < budget:
            for g in list(active):
                if len(picks) >= budget:
                    break
                c = next_candidate(g)
                if c is None:
                    active.remove(g)
                    continue
                taken.add(c.id)
                picks.append(Pick(c.id, g, c.score, c.rank))
                need[g] -= 1
                if first_pass and need[g] <= 0:
                    active.remove(g)
    return picks


def fuse_rankings(rankings: Sequence[Sequence[Candidate]], rrf_k: int) -> list[Candidate]:
    """Fuse several queries' rankings for one gap (one query per phrase) by reciprocal rank.

    A single ranking is returned as is (its scores stay the retriever's). Several are fused: the score
    becomes the RRF score and the rank the fused rank.
    """
    if len(rankings) == 1:
        return list(rankings[0])
    fused = rrf_fuse([[c.id for c in r] for r in rankings], rrf_k)
    return [Candidate(rid, score, i) for i, (rid, score) in enumerate(fused, start=1)]


def sample_uniform(ids: Sequence[str], n: int, seed: int, exclude: set[str] | frozenset[str] = frozenset()) -> list[str]:
    """``n`` ids drawn uniformly without replacement (fewer if not enough), deterministic given ``seed``.

    The draw does not depend on the order of ``ids``.
    """
    pool = sorted(set(ids) - set(exclude))
    if n >= len(pool):
        return pool
    return random.Random(seed).sample(pool, n)


# --- contamination guard --------------------------------------------------------------------------


def average_hash(image: bytes, size: int = 8) -> int | None:
    """A perceptual average hash of an encoded image (``size*size`` bits), or ``None`` if it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(image)) as im:
            gray = np.asarray(im.convert("L").resize((size, size), Image.Resampling.BILINEAR), dtype=np.float64)
    except (UnidentifiedImageError, OSError, ValueError):
        return None
    bits = (gray > gray.mean()).flatten()
    if not bits.any():
        # A flat image: hash by its brightness bucket so that black and white differ.
        return int(gray.mean()) & 0xFF
    return int("".join("1" if b else "0" for b in bits), 2)


_WORD = re.compile(r"[a-z0-9]+")


def instruction_tokens(text: str) -> frozenset[str]:
    """Lower-case word set of an instruction, without the image placeholder."""
    return frozenset(_WORD.findall(text.replace("<image>", " ").lower()))


def jaccard_matrix(left: Sequence[frozenset[str]], right: Sequence[frozenset[str]]) -> np.ndarray:
    """Pairwise Jaccard similarity of word sets, ``(len(left), len(right))``, via sparse products."""
    from scipy import sparse

    vocab: dict[str, int] = {}
    for s in list(left) + list(right):
        for w in s:
            vocab.setdefault(w, len(vocab))

    def matrix(sets: Sequence[frozenset[str]]) -> "sparse.csr_matrix":
        rows = [i for i, s in enumerate(sets) for _ in s]
        cols = [vocab[w] for s in sets for w in s]
        return sparse.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(sets), max(1, len(vocab))))

    if not left or not right:
        return np.zeros((len(left), len(right)))
    a, b = matrix(left), matrix(right)
    inter = np.asarray((a @ b.T).todense())
    na = np.array([len(s) for s in left], dtype=np.float64)[:, None]
    nb = np.array([len(s) for s in right], dtype=np.float64)[None, :]
    union = na + nb - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


@dataclass
class GuardItem:
    """What the guard compares: an id, its images' hashes and its instruction's words."""

    id: str
    hashes: list[int] = field(default_factory=list)
    words: frozenset[str] = frozenset()


def find_contaminated(
    candidates: Sequence[GuardItem],
    evaluation: Sequence[GuardItem],
    max_hash_distance: int,
    min_instruction_similarity: float,
    rule: str = "both",
) -> dict[str, str]:
    """Candidates that are near-duplicates of an evaluation sample (docs/method.md §3).

    An image matches when the Hamming distance of two average hashes is at most ``max_hash_distance``;
    instructions match when their word Jaccard similarity is at least ``min_instruction_similarity``.

    Args:
        candidates: supporting samples considered for selection.
        evaluation: validation and test samples of the target task.
        max_hash_distance: largest Hamming distance between image hashes that counts as the same image.
        min_instruction_similarity: smallest Jaccard similarity that counts as the same instruction.
        rule: ``both`` (image and instruction match; samples without images: instruction alone),
            ``either``, ``image`` or ``instruction``.

    Returns:
        candidate id → reason (naming the evaluation sample it duplicates).

    Raises:
        ValueError: unknown rule.
    """
    if rule not in ("both", "either", "image", "instruction"):
        raise ValueError(f"unknown contamination rule {rule!r}")
    if not candidates or not evaluation:
        return {}
    sim = jaccard_matrix([c.words for c in candidates], [e.words for e in evaluation])
    text_hit = sim >= min_instruction_similarity
    image_hit = _image_matches(candidates, evaluation, max_hash_distance)
    has_image = np.array([bool(c.hashes) for c in candidates])[:, None] & np.array(
        [bool(e.hashes) for e in evaluation]
    )[None, :]
    if rule == "both":
        hit = np.where(has_image, image_hit & text_hit, text_hit)
    elif rule == "either":
        hit = image_hit | text_hit
    elif rule == "image":
        hit = image_hit
    else:
        hit = text_hit
    out: dict[str, str] = {}
    for i, j in zip(*np.nonzero(hit)):
        cid = candidates[int(i)].id
        if cid in out:
            continue
        parts = []
        if image_hit[i, j]:
            parts.append("image")
        if text_hit[i, j]:
            parts.append(f"instruction (similarity {sim[i, j]:.2f})")
        out[cid] = f"near-duplicate of evaluation sample {evaluation[int(j)].id}: " + " and ".join(parts)
    return out


def _image_matches(candidates: Sequence[GuardItem], evaluation: Sequence[GuardItem], max_distance: int) -> np.ndarray:
    """``(n_candidates, n_eval)`` bool: some image of one is within ``max_distance`` bits of some image of the other."""
    hit = np.zeros((len(candidates), len(evaluation)), dtype=bool)
    e_hashes = [(j, h) for j, e in enumerate(evaluation) for h in e.hashes]
    if not e_hashes:
        return hit
    e_idx = np.array([j for j, _ in e_hashes])
    e_val = np.array([h & 0xFFFFFFFFFFFFFFFF for _, h in e_hashes], dtype=np.uint64)
    for i, c in enumerate(candidates):
        for h in c.hashes:
            dist = np.bitwise_count(np.bitwise_xor(e_val, np.uint64(h & 0xFFFFFFFFFFFFFFFF)))
            hit[i, e_idx[dist <= max_distance]] = True
    return hit


# --- INSTA-style baseline ---------------------------------------------------------------------------


def rank_by_instruction_similarity(
    pool_ids: Sequence[str], pool_vectors: np.ndarray, target_vectors: np.ndarray
) -> list[Candidate]:
    """Rank pool samples by cosine similarity of their instruction to the target task's mean instruction
    (the INSTA-style baseline of docs/method.md §1). Ties by id."""
    if len(pool_ids) == 0 or len(target_vectors) == 0:
        return []
    p = np.asarray(pool_vectors, dtype=np.float64)
    t = np.asarray(target_vectors, dtype=np.float64)
    p = p / np.maximum(np.linalg.norm(p, axis=1, keepdims=True), 1e-12)
    t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
    centroid = t.mean(axis=0)
    centroid /= max(float(np.linalg.norm(centroid)), 1e-12)
    scores = p @ centroid
    order = sorted(range(len(pool_ids)), key=lambda i: (-scores[i], pool_ids[i]))
    return [Candidate(str(pool_ids[i]), float(scores[i]), r) for r, i in enumerate(order, start=1)]


# --- output -------------------------------------------------------------------------------------------


@dataclass
class Provenance:
    """Why a gap's picks were selected: the gap, its skill, its errors, the query and the retrieval mode."""

    gap_id: int | None
    skill: str | None
    error_ids: list[str]
    query: str | None
    retrieval_mode: str | None


def selection_table(
    picks: Sequence[Pick],
    provenance: Mapping[str, Provenance],
    strategy: str,
    round_index: int,
    source: str = "pool",
) -> pa.Table:
    """The ``selection.parquet`` table (``SELECTION_SCHEMA``) for picks and their gaps' provenance.

    A pick whose gap is missing from ``provenance`` gets empty provenance (``error_ids=[]``).
    """
    empty = Provenance(None, None, [], None, None)
    rows = {name: [] for name in SELECTION_SCHEMA.names}
    for p in picks:
        prov = provenance.get(p.gap, empty)
        rows["id"].append(p.id)
        rows["source"].append(source)
        rows["strategy"].append(strategy)
        rows["round"].append(round_index)
        rows["gap_id"].append(prov.gap_id)
        rows["skill"].append(prov.skill)
        rows["error_ids"].append(list(prov.error_ids))
        rows["query"].append(prov.query)
        rows["retrieval_mode"].append(prov.retrieval_mode)
        rows["score"].append(None if p.score is None or not math.isfinite(p.score) else float(p.score))
        rows["rank"].append(None if p.rank is None else int(p.rank))
    return pa.table(rows, schema=SELECTION_SCHEMA)
