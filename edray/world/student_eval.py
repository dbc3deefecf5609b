"""Per-skill accuracy of a student on evaluation rows, with transformers (batched greedy decoding).

Used to check that the world's pretrained student has the gaps it was designed to have (strong on
most skills, weak on the under-represented ones) before the pipeline tries to find and close them.
The final answer is parsed and scored exactly as the diagnose stage does (:mod:`edray.diagnose.core`,
:mod:`edray.diagnose.scoring`), so "correct" means the same thing everywhere.

The *restricted* accuracy is a sanity check suggested by the tiny-model notes: at the position where
the answer starts, take the argmax over the answers that are possible for the question (the options,
yes/no, or the gold answers of all rows with the same skills and answer type, so give enough rows
per skill) instead of over the whole vocabulary. A weak
model's yes/no prior leaks across skills; restricted accuracy shows whether the skill itself is there.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edray.diagnose.core import parse_steps
from edray.diagnose.scoring import DEFAULT_SCORERS, score_answer
from edray.evaluate.core import row_skills

_STEP_PROMPT = re.compile(r"\bsteps?\b", re.IGNORECASE)
_WELL_FORMED = re.compile(r"^Step 1: \S.*(\nStep \d+: \S.*)*\nAnswer: \S.*$")


@dataclass
class StudentEvalReport:
    """Accuracy of a student on a set of rows.

    Attributes:
        per_skill: skill -> accuracy (a row counts for each of its skills; a row naming none counts
            only toward ``overall``).
        counts: skill -> rows scored.
        overall: accuracy over all rows.
        restricted: skill -> restricted-argmax accuracy (when requested).
        well_formed: share of replies to step-style prompts that read ``Step 1: ...`` lines then
            ``Answer: ...``; ``None`` when no prompt asked for steps.
        predictions: one dict per row: ``id``, ``skills``, ``reply``, ``prediction``, ``gold``,
            ``correct`` (and ``restricted_correct``).
    """

    per_skill: dict[str, float]
    counts: dict[str, int]
    overall: float
    restricted: dict[str, float] | None = None
    well_formed: float | None = None
    predictions: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self, with_predictions: bool = False) -> dict[str, Any]:
        out = asdict(self)
        if not with_predictions:
            out.pop("predictions")
        return out


def is_well_formed(reply: str | None) -> bool:
    """Whether a reply reads ``Step 1: ...`` lines (numbered from 1) and then ``Answer: ...``."""
    return bool(reply) and bool(_WELL_FORMED.match(reply.strip()))


def chance_by_skill(rows: Sequence[Mapping[str, Any]]) -> dict[str, float]:
    """Accuracy of a uniform guess among the possible answers, per skill (as :func:`evaluate_student`
    credits rows to skills): one over the options, yes/no, or the distinct gold answers of the rows
    with the same skills and answer type.

    Args:
        rows: ``EVAL_SCHEMA`` rows.

    Returns:
        skill -> mean chance accuracy of its rows.
    """
    answers_by_task: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        answers_by_task[_answer_key(r)].add(str(r["answer"]))
    per_skill: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        chance = 1.0 / max(1, len(_candidates(r, answers_by_task)))
        for s in row_skills(r):
            per_skill[s].append(chance)
    return {s: sum(v) / len(v) for s, v in sorted(per_skill.items())}


def _candidates(row: Mapping[str, Any], answers_by_task: Mapping[str, set[str]]) -> list[str]:
    choices = row.get("choices")
    if row.get("answer_type") == "multiple_choice" and choices:
        return [chr(ord("A") + i) for i in range(len(choices))]
    if row.get("answer_type") == "yes_no":
        return ["yes", "no"]
    return sorted(answers_by_task.get(_answer_key(row), {str(row["answer"])}))


def _answer_key(row: Mapping[str, Any]) -> str:
    """Rows that share skills and answer type share their possible answers."""
    return f"{','.join(row_skills(row))}|{row.get('answer_type')}"


def _prompt_messages(row: Mapping[str, Any]) -> list[dict[str, str]]:
    """The row's conversation up to (not including) its first assistant turn."""
    out = []
    for m in row["messages"]:
        if m["role"] == "assistant":
            break
        out.append({"role": m["role"], "content": m["content"]})
    return out


def evaluate_student(
    model_dir: str | Path,
    rows: Sequence[Mapping[str, Any]],
    batch_size: int = 64,
    max_new_tokens: int = 64,
    restricted: bool = False,
    scorers: Mapping[str, str] | None = None,
    torch_threads: int | None = None,
) -> StudentEvalReport:
    """Answer ``rows`` with greedy decoding and score them per skill.

    Args:
        model_dir: a student folder (transformers, ``trust_remote_code`` off).
        rows: ``EVAL_SCHEMA`` rows (``images``, ``messages``, ``answer``, ``answer_type``, ``choices``,
            ``metadata``); the prompt is the conversation before the first assistant turn.
        batch_size: rows per generation batch.
        max_new_tokens: generation budget per reply.
        restricted: also compute the restricted-argmax accuracy (see the module docstring).
        scorers: answer type -> scorer name (default: the diagnose stage's defaults).
        torch_threads: torch threads (default: torch's choice).

    Returns:
        The report.

    Raises:
        ValueError: ``rows`` is empty.
    """
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor

    from edray.train.core import decode_images

    if not rows:
        raise ValueError("evaluate_student: no rows")
    if torch_threads:
        torch.set_num_threads(torch_threads)
    scorers = dict(scorers or DEFAULT_SCORERS)
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=False)
    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=False, dtype=torch.float32)
    model.eval()
    tok = processor.tokenizer
    answers_by_task: dict[str, set[str]] = defaultdict(set)
    for r in rows:
        answers_by_task[_answer_key(r)].add(str(r["answer"]))
    # Token ids in the context where they occur in a reply (after the generation prompt), so that
    # tokenizers that mark word starts (a leading-space marker) give the same ids as generation does.
    gen_prompt = processor.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    answer_marker = _ids_after(tok, gen_prompt, "\nAnswer:")

    preds: list[dict[str, Any]] = []
    for start in range(0, len(rows), batch_size):
        part = rows[start : start + batch_size]
        prompts = [processor.apply_chat_template(_prompt_messages(r), tokenize=False, add_generation_prompt=True) for r in part]
        images = [img for r in part for img in decode_images(r.get("images"), str(r.get("id")))]
        enc = processor(text=prompts, images=images or None, padding=True, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                output_logits=restricted,
                return_dict_in_generate=True,
                pad_token_id=tok.pad_token_id,
            )
        new = out.sequences[:, enc["input_ids"].shape[1] :]
        for i, r in enumerate(part):
            ids = new[i].tolist()
            if tok.eos_token_id in ids:
                ids = ids[: ids.index(tok.eos_token_id)]
            reply = tok.decode([t for t in ids if t != tok.pad_token_id], skip_special_tokens=True)
            _, prediction = parse_steps(reply)
            score = score_answer(prediction, str(r["answer"]), str(r["answer_type"]), r.get("choices"), scorers)
            user_text = " ".join(m["content"] for m in _prompt_messages(r))
            rec: dict[str, Any] = {
                "id": r.get("id"),
                "skills": row_skills(r),
                "reply": reply,
                "prediction": prediction,
                "gold": str(r["answer"]),
                "correct": score >= 1.0,
                "step_prompt": bool(_STEP_PROMPT.search(user_text)),
            }
            if restricted:
                rec["restricted_correct"] = _restricted_correct(
                    tok, gen_prompt, ids, [lg[i] for lg in out.logits], answer_marker, r, answers_by_task
                )
            preds.append(rec)

    per_skill: dict[str, list[bool]] = defaultdict(list)
    per_skill_r: dict[str, list[bool]] = defaultdict(list)
    for p in preds:
        for s in p["skills"]:
            per_skill[s].append(p["correct"])
            if restricted and p["restricted_correct"] is not None:
                per_skill_r[s].append(p["restricted_correct"])
    step_replies = [p["reply"] for p in preds if p["step_prompt"]]
    return StudentEvalReport(
        per_skill={s: sum(v) / len(v) for s, v in sorted(per_skill.items())},
        counts={s: len(v) for s, v in sorted(per_skill.items())},
        overall=sum(p["correct"] for p in preds) / len(preds),
        restricted={s: sum(v) / len(v) for s, v in sorted(per_skill_r.items())} if restricted else None,
        well_formed=(sum(is_well_formed(t) for t in step_replies) / len(step_replies)) if step_replies else None,
        predictions=preds,
    )


def _ids_after(tok: Any, context: str, text: str) -> list[int]:
    """Token ids of ``text`` when it follows ``context``."""
    base = tok(context, add_special_tokens=False)["input_ids"]
    full = tok(context + text, add_special_tokens=False)["input_ids"]
    return full[len(base) :]


def _restricted_correct(
    tok: Any,
    gen_prompt: str,
    ids: list[int],
    logits: list[Any],
    answer_marker: list[int],
    row: Mapping[str, Any],
    answers_by_task: Mapping[str, set[str]],
) -> bool | None:
    """Argmax over the first tokens of the possible answers, where the reply's answer starts: after
    the last ``Answer:`` of the reply, or at its first token for a reply without one. ``None`` when
    fewer than two answers are possible (nothing to choose between)."""
    pos, context = 0, gen_prompt
    m = len(answer_marker)
    for j in range(len(ids) - m, -1, -1):
        if m and ids[j : j + m] == answer_marker:
            pos, context = j + m, gen_prompt + "\nAnswer:"
            break
    if pos >= len(logits):
        return False
    best, best_score = None, float("-inf")
    candidates = _candidates(row, answers_by_task)
    if len(candidates) < 2:
        return None
    for cand in candidates:
        first = _ids_after(tok, context, f" {cand}" if context != gen_prompt else cand)
        if not first:
            continue
        score = float(logits[pos][first[0]])
        if score > best_score:
            best, best_score = cand, score
    return best is not None and best.lower() == str(row["answer"]).lower()
