"""Budget allocation and filling, rank fusion, contamination guard, INSTA ranking, output table."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from edray.schemas import SELECTION_SCHEMA
from edray.select.core import (
    Candidate,
    GuardItem,
    Pick,
    Provenance,
    allocate_budget,
    average_hash,
    fill_budget,
    find_contaminated,
    fuse_rankings,
    instruction_tokens,
    jaccard_matrix,
    rank_by_instruction_similarity,
    replay_count,
    resolve_budget,
    sample_uniform,
    selection_table,
)


def cands(*ids: str) -> list[Candidate]:
    return [Candidate(i, 1.0 / r, r) for r, i in enumerate(ids, start=1)]


class TestBudget:
    def test_resolve(self) -> None:
        assert resolve_budget(10, None, 100) == 10
        assert resolve_budget(None, 0.06, 1000) == 60
        assert resolve_budget(500, None, 100) == 100
        with pytest.raises(ValueError):
            resolve_budget(10, 0.1, 100)
        with pytest.raises(ValueError):
            resolve_budget(None, None, 100)

    def test_replay_count(self) -> None:
        assert replay_count(100, 0.5) == 50
        assert replay_count(7, 0.0) == 0
        assert replay_count(3, 1.0) == 3

    def test_proportional_sums_exactly(self) -> None:
        q = allocate_budget(10, {"a": 5, "b": 3, "c": 1})
        assert sum(q.values()) == 10
        # exact shares 5.56, 3.33, 1.11 -> floors 5, 3, 1; the largest remainder (a) gets the last unit
        assert q == {"a": 6, "b": 3, "c": 1}

    def test_uniform(self) -> None:
        assert allocate_budget(7, {"a": 100, "b": 1, "c": 1}, mode="uniform") == {"a": 3, "b": 2, "c": 2}

    def test_ties_go_to_earlier_key(self) -> None:
        assert allocate_budget(1, {"x": 1, "y": 1}) == {"x": 1, "y": 0}
        assert allocate_budget(1, {"y": 1, "x": 1}) == {"y": 1, "x": 0}

    def test_one_gap_zero_budget_and_zero_weights(self) -> None:
        assert allocate_budget(9, {"only": 4}) == {"only": 9}
        assert allocate_budget(0, {"a": 1, "b": 2}) == {"a": 0, "b": 0}
        assert allocate_budget(4, {"a": 0, "b": 0}) == {"a": 2, "b": 2}
        assert allocate_budget(5, {}) == {}

    def test_budget_smaller_than_gaps(self) -> None:
        q = allocate_budget(2, {"a": 1, "b": 5, "c": 3})
        assert q == {"a": 0, "b": 1, "c": 1}

    def test_bad_input(self) -> None:
        with pytest.raises(ValueError):
            allocate_budget(-1, {"a": 1})
        with pytest.raises(ValueError):
            allocate_budget(1, {"a": -1})
        with pytest.raises(ValueError):
            allocate_budget(1, {"a": 1}, mode="greedy")


class TestFill:
    def test_quotas_and_dedup(self) -> None:
        ranked = {"a": cands("1", "2", "3", "4"), "b": cands("2", "5", "6")}
        picks = fill_budget(ranked, {"a": 2, "b": 2}, budget=4)
        assert [(p.id, p.gap) for p in picks] == [("1", "a"), ("2", "b"), ("3", "a"), ("5", "b")]
        assert len({p.id for p in picks}) == 4

    def test_unused_quota_goes_to_others(self) -> None:
        ranked = {"a": cands("1"), "b": cands("2", "3", "4", "5")}
        picks = fill_budget(ranked, {"a": 3, "b": 1}, budget=4)
        assert len(picks) == 4
        assert sorted(p.id for p in picks) == ["1", "2", "3", "4"]

    def test_more_budget_than_candidates(self) -> None:
        ranked = {"a": cands("1", "2"), "b": cands("2", "3")}
        picks = fill_budget(ranked, {"a": 5, "b": 5}, budget=10)
        assert sorted(p.id for p in picks) == ["1", "2", "3"]

    def test_exclusions_and_one_gap(self) -> None:
        picks = fill_budget({"g": cands("1", "2", "3", "4")}, {"g": 2}, budget=2, exclude={"1"})
        assert [p.id for p in picks] == ["2", "3"]
        assert [p.rank for p in picks] == [2, 3]

    def test_exact_fill_and_empty(self) -> None:
        ranked = {g: cands(*[f"{g}{i}" for i in range(10)]) for g in "abc"}
        for budget in (0, 1, 7, 30):
            assert len(fill_budget(ranked, allocate_budget(budget, {"a": 3, "b": 2, "c": 1}), budget)) == budget
        assert fill_budget({}, {}, 5) == []

    def test_tied_candidates_across_gaps_go_to_first_turn(self) -> None:
        ranked = {"a": cands("x", "y"), "b": cands("x", "z")}
        picks = fill_budget(ranked, {"a": 1, "b": 1}, 2)
        assert [(p.id, p.gap) for p in picks] == [("x", "a"), ("z", "b")]


class TestFusion:
    def test_single_ranking_unchanged(self) -> None:
        r = cands("a", "b")
        assert fuse_rankings([r], 60) == r

    def test_rrf_hand_computed(self) -> None:
        fused = fuse_rankings([cands("a", "b", "c"), cands("b", "d")], rrf_k=1)
        # a: 1/2 ; b: 1/3 + 1/2 ; c: 1/4 ; d: 1/3
        assert [c.id for c in fused] == ["b", "a", "d", "c"]
        assert fused[0].score == pytest.approx(1 / 3 + 1 / 2)
        assert [c.rank for c in fused] == [1, 2, 3, 4]

    def test_rrf_ties_by_id(self) -> None:
        fused = fuse_rankings([cands("b"), cands("a")], rrf_k=60)
        assert [c.id for c in fused] == ["a", "b"]


def png(pattern: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pattern.astype(np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


class TestContamination:
    def test_average_hash_near_duplicates(self) -> None:
        rng = np.random.default_rng(0)
        img = (rng.random((32, 32)) > 0.5) * 255
        noisy = np.clip(img + rng.normal(0, 10, img.shape), 0, 255)
        other = np.rot90(img)
        h1, h2, h3 = average_hash(png(img)), average_hash(png(noisy)), average_hash(png(other))
        assert bin(h1 ^ h2).count("1") <= 4
        assert bin(h1 ^ h3).count("1") > 10
        assert average_hash(b"not an image") is None

    def test_rules(self) -> None:
        ev = [GuardItem("v1", [0b1111], instruction_tokens("<image> Is there a red square?"))]
        same = GuardItem("p1", [0b1110], instruction_tokens("Is there a red square ?"))
        same_img_other_q = GuardItem("p2", [0b1111], instruction_tokens("How many circles are there?"))
        other_img_same_q = GuardItem("p3", [0b0000_1111_0000], instruction_tokens("is there a red square"))
        no_image_same_q = GuardItem("p4", [], instruction_tokens("Is there a red square?"))
        cs = [same, same_img_other_q, other_img_same_q, no_image_same_q]
        both = find_contaminated(cs, ev, max_hash_distance=1, min_instruction_similarity=0.8, rule="both")
        assert set(both) == {"p1", "p4"}
        assert "v1" in both["p1"] and "image" in both["p1"]
        assert set(find_contaminated(cs, ev, 1, 0.8, rule="image")) == {"p1", "p2"}
        assert set(find_contaminated(cs, ev, 1, 0.8, rule="instruction")) == {"p1", "p3", "p4"}
        assert set(find_contaminated(cs, ev, 1, 0.8, rule="either")) == {"p1", "p2", "p3", "p4"}
        assert find_contaminated(cs, [], 1, 0.8) == {}
        with pytest.raises(ValueError):
            find_contaminated(cs, ev, 1, 0.8, rule="any")

    def test_jaccard(self) -> None:
        m = jaccard_matrix([frozenset("ab"), frozenset()], [frozenset("bc"), frozenset("ab")])
        np.testing.assert_allclose(m, [[1 / 3, 1.0], [0.0, 0.0]])


def test_sample_uniform_deterministic_and_order_free() -> None:
    ids = [str(i) for i in range(100)]
    a = sample_uniform(ids, 10, seed=1, exclude={"3"})
    assert a == sample_uniform(list(reversed(ids)), 10, seed=1, exclude={"3"})
    assert len(set(a)) == 10 and "3" not in a
    assert sample_uniform(ids[:3], 10, seed=1) == ["0", "1", "2"]


def test_insta_ranking() -> None:
    pool = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]])
    target = np.array([[1.0, 0.1], [0.9, -0.1]])
    ranked = rank_by_instruction_similarity(["x", "y", "z"], pool, target)
    assert [c.id for c in ranked] == ["x", "z", "y"]
    assert rank_by_instruction_similarity([], pool[:0], target) == []


def test_selection_table() -> None:
    picks = [Pick("s1", "g0", 2.5, 1), Pick("s2", "replay", float("nan"), 0)]
    prov = {"g0": Provenance(0, "counting", ["e1", "e2"], "counting objects", "bm25")}
    t = selection_table(picks, prov, "error_driven", 1)
    assert t.schema == SELECTION_SCHEMA
    rows = {r["id"]: r for r in t.to_pylist()}
    assert rows["s1"]["error_ids"] == ["e1", "e2"] and rows["s1"]["retrieval_mode"] == "bm25"
    assert rows["s2"]["gap_id"] is None and rows["s2"]["score"] is None and rows["s2"]["error_ids"] == []
