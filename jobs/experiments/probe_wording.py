"""How a student answers a target task under other question sentences: accuracy, format and where it goes wrong.

A small student reads an unseen target sentence as the source task it most resembles, so one target can
fail check (b) by its wording alone (the student answers a count to a more/fewer/same question). This
script asks a student ``N`` validation rows of a target task under each candidate sentence and reports, for
its wrong answers, what check (b) measures: the share of well-formed replies, the mean number of steps and
the true erroneous skill (``none``: every step holds and only the answer is wrong; ``unparsed``: the first
wrong step is not a step of the world's language). It also counts the prompt's words the student's
tokenizer does not know (``unk``), which a usable sentence must not have.

    python jobs/experiments/probe_wording.py STUDENT outnumber 150 \\
        "Compare the {color_a} things with the {color_b} things: more, fewer or the same?"

Without sentences it probes the task's own. Sentences get the shared step trigger appended when they lack
it. One JSON line per sentence on stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from collections import Counter

from edray.world import tasks
from edray.world.pool import generate_eval_rows, true_error_skill, true_error_step
from edray.world.skills import split_steps
from edray.world.student_eval import evaluate_student, is_well_formed


def probe(student: str, task: str, n: int, template: str, seed: int = 0) -> dict:
    """Answer ``n`` validation rows of ``task`` asked with ``template`` and profile the errors."""
    from transformers import AutoProcessor

    if not template.endswith(tasks.STEP_TRIGGER):
        template = f"{template} {tasks.STEP_TRIGGER}"
    original = tasks.TARGET_TASK_BY_NAME[task]
    tasks.TARGET_TASK_BY_NAME[task] = dataclasses.replace(original, template=template)
    try:
        rows = generate_eval_rows(task, "validation", n, seed=seed).to_pylist()
    finally:
        tasks.TARGET_TASK_BY_NAME[task] = original
    tok = AutoProcessor.from_pretrained(student, trust_remote_code=False).tokenizer
    unk = sum(i == tok.unk_token_id for i in tok(rows[0]["messages"][0]["content"])["input_ids"])
    report = evaluate_student(student, rows, batch_size=64, max_new_tokens=96)
    by_id = {r["id"]: r for r in rows}
    errors = [p for p in report.predictions if not p["correct"]]
    skills: Counter[str] = Counter()
    for p in errors:
        row = by_id[p["id"]]
        skills["none" if true_error_step(row, p["reply"]) is None else (true_error_skill(row, p["reply"]) or "unparsed")] += 1
    k = max(1, len(errors))
    return {
        "template": template,
        "unk": unk,
        "accuracy": round(report.overall, 3),
        "errors": len(errors),
        "well_formed": round(sum(is_well_formed(p["reply"]) for p in errors) / k, 3),
        "mean_steps": round(sum(len(split_steps(p["reply"])[0]) for p in errors) / k, 2),
        "true_skills": dict(skills.most_common()),
        "first_error_reply": errors[0]["reply"] if errors else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("student", help="student folder (a Hugging Face model folder)")
    parser.add_argument("task", choices=tasks.target_task_names(), help="target task")
    parser.add_argument("n", type=int, help="validation rows per sentence")
    parser.add_argument("templates", nargs="*", help="question sentences with the task's {slot} fields")
    parser.add_argument("--seed", type=int, default=0, help="evaluation seed of the rows (default 0)")
    args = parser.parse_args()
    for template in args.templates or [tasks.TARGET_TASK_BY_NAME[args.task].template]:
        print(json.dumps(probe(args.student, args.task, args.n, template, args.seed)), flush=True)


if __name__ == "__main__":
    main()
