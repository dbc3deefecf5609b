"""The world teacher: an :class:`~edray.serve.engine.Engine` with privileged access to the scene graph.

It answers the prompts of :mod:`edray.world.teacher_prompts` (and the same prompts rendered from the
diagnose stage's templates) the way a strong teacher would, using the ground truth a real teacher
lacks: the scene graph embedded in each PNG. That makes the whole pipeline measurable offline.

- **Answer switch** (docs/method.md section 1, step 2): the option letters' probabilities start from the
  hinted prior and move toward the hinted option while the student's steps hold in the scene; from
  the first step that contradicts the scene (:func:`~edray.world.skills.check_step`) they move to the
  option the wrong step supports (the other option when there are two).
- **Skill analysis** (step 3): the skill of the erroneous step, as one of several paraphrases.
- **Annotation** (step 4): the skills of a supporting sample, recognized from its instruction wording
  (falling back to its answer's steps), as paraphrases; JSON when ``response_format`` asks for it.
- **Step verdict** (the ask-per-step baseline): ``yes``/``no`` for "Is step k correct?".

Replies are deterministic given the teacher's seed and the request. :class:`TeacherNoise` adds wrong
steps, wrong skills, malformed replies, latency and 503 failures at configured rates.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
from collections.abc import AsyncIterator

from edray.serve.engine import ChatRequest, ChatResult, EngineError, TokenLogprob
from edray.world.config import TeacherConfig
from edray.world.scene import Scene, scene_from_png
from edray.world.skills import SKILL_NAMES, check_step, parse_step, skill_phrases, split_steps, split_words
from edray.world.tasks import identify_task, task_skills
from edray.world.teacher_prompts import (
    AnswerSwitchPrompt,
    parse_annotation_prompt,
    parse_answer_switch_prompt,
    parse_skill_prompt,
    parse_verdict_prompt,
)

FALLBACK_SKILL_PHRASE = "general visual understanding"
MALFORMED_REPLIES = ("I am not sure.", "{\"skill\": ", "The image shows several things", "?")


class WorldTeacher:
    """A teacher engine for the skills world.

    Args:
        config: teacher settings (model id, seed, belief dynamics, noise).
    """

    def __init__(self, config: TeacherConfig | None = None) -> None:
        self.config = config or TeacherConfig()
        # Attempts seen per request, so that simulated faults are drawn per attempt (noise.per_attempt).
        self._attempts: dict[str, int] = {}

    @classmethod
    def from_options(cls, name: str, options: dict[str, object]) -> "WorldTeacher":
        """The engine as serve and the model client load it by import path (``edray.world.teacher:WorldTeacher``).

        Args:
            name: the model name it answers to.
            options: :class:`~edray.world.config.TeacherConfig` fields (seed, noise...).
        """
        return cls(TeacherConfig(**{**options, "model_id": name}))

    def model_ids(self) -> list[str]:
        """The one name this engine answers to."""
        return [self.config.model_id]

    # --- engine contract ---------------------------------------------------------------------

    async def generate(self, request: ChatRequest) -> ChatResult:
        """Answer one request.

        Raises:
            EngineError: 400 for a prompt the teacher does not understand or an answer-switch
                request without a world image; 503 when noise makes the request fail.
        """
        text = _user_text(request)
        noise = self.config.noise
        rng = self._rng("noise", text + self._attempt_suffix(text), request.seed)
        failed, slow, malformed = rng.random(), rng.random(), rng.random()
        if failed < noise.failed:
            raise EngineError("world teacher: simulated overload", status=503)
        if slow < noise.slow and noise.slow_seconds > 0:
            await asyncio.sleep(noise.slow_seconds)
        result = self._answer(request, text)
        if malformed < noise.malformed:
            bad = MALFORMED_REPLIES[rng.randrange(len(MALFORMED_REPLIES))]
            lp = [TokenLogprob(bad.split()[0] if bad.split() else bad, -0.1, [])] if request.logprobs else None
            result = ChatResult(text=bad, logprobs=lp)
        result.prompt_tokens = len(split_words(text))
        result.completion_tokens = max(1, len(split_words(result.text)))
        if request.stop:
            for s in request.stop:
                if s and s in result.text:
                    result.text = result.text[: result.text.index(s)]
        return result

    async def stream(self, request: ChatRequest) -> AsyncIterator[str]:
        """Yield the whole reply once (the teacher has no incremental decoding)."""
        result = await self.generate(request)
        yield result.text

    # --- behaviours --------------------------------------------------------------------------

    def _answer(self, request: ChatRequest, text: str) -> ChatResult:
        switch = parse_answer_switch_prompt(text)
        if switch is not None:
            return self._answer_switch(request, switch)
        verdict = parse_verdict_prompt(text)
        if verdict is not None:
            claim = parse_step(verdict.steps[-1])
            scene = self._scene(request)
            ok = claim is not None and check_step(claim, scene)
            return ChatResult(text="yes" if ok else "no")
        skill = parse_skill_prompt(text)
        if skill is not None:
            return self._skill_analysis(request, skill.question, skill.erroneous_step, text)
        note = parse_annotation_prompt(text)
        if note is not None:
            return self._annotate(request, note.instruction, note.answer, text)
        raise EngineError(
            "world teacher: the prompt is none of answer switch, step verdict, skill analysis or annotation "
            "(see edray.world.teacher_prompts)",
            status=400,
        )

    def _scene(self, request: ChatRequest) -> Scene:
        for data in request.images:
            scene = scene_from_png(data)
            if scene is not None:
                return scene
        raise EngineError("world teacher: this prompt needs the question's image (a world PNG)", status=400)

    def option_probabilities(self, prompt: AnswerSwitchPrompt, scene: Scene) -> list[float]:
        """The teacher's belief over the options after the prompt's steps.

        While every step holds, the hinted option's probability moves from the prior to
        ``config.confident`` over ``config.settle_steps`` steps. From the first step that contradicts
        the scene (an unparseable step counts as contradicting), the option the wrong step supports
        gets ``config.confident`` and the hinted option shares the rest.

        Args:
            prompt: the parsed answer-switch prompt.
            scene: the question's scene.

        Returns:
            One probability per option, summing to 1.
        """
        cfg = self.config
        n = len(prompt.options)
        hint = ord(prompt.hint_letter) - 65
        steps = list(prompt.steps)
        wrong = next((k for k, s in enumerate(steps, 1) if not _step_holds(s, scene)), None)
        rng = self._rng("step", prompt.question + "|" + "|".join(prompt.options), None)
        if rng.random() < cfg.noise.wrong_step:
            # A teacher that misjudges the chain: the shift lands one step early or late (or on a
            # correct chain, at a step of its own).
            wrong = max(1, wrong + rng.choice((-1, 1))) if wrong is not None else rng.randint(1, 3)
        if wrong is None or wrong > len(steps):
            p_hint = prompt.hint_prob
            if cfg.confident > p_hint:
                p_hint += (cfg.confident - p_hint) * min(1.0, len(steps) / cfg.settle_steps)
            rest = (1.0 - p_hint) / (n - 1)
            return [p_hint if i == hint else rest for i in range(n)]
        supported = _supported_options(steps[wrong - 1], prompt.options, hint)
        probs = [0.0] * n
        for i in supported:
            probs[i] = cfg.confident / len(supported)
        others = [i for i in range(n) if i not in supported]
        for i in others:
            probs[i] = (1.0 - cfg.confident) / len(others)
        return probs

    def _answer_switch(self, request: ChatRequest, prompt: AnswerSwitchPrompt) -> ChatResult:
        scene = self._scene(request)
        probs = self.option_probabilities(prompt, scene)
        letters = [chr(65 + i) for i in range(len(probs))]
        if request.temperature > 0:
            rng = self._rng("sample", _user_text(request), request.seed)
            pick = rng.choices(range(len(probs)), weights=probs)[0]
        else:
            pick = max(range(len(probs)), key=lambda i: (probs[i], -i))
        logprobs = None
        if request.logprobs:
            ranked = sorted(range(len(probs)), key=lambda i: (-probs[i], i))
            top = [(letters[i], math.log(max(probs[i], 1e-12))) for i in ranked[: request.top_logprobs]]
            logprobs = [TokenLogprob(letters[pick], math.log(max(probs[pick], 1e-12)), top)]
        return ChatResult(text=letters[pick], logprobs=logprobs)

    def _skill_analysis(self, request: ChatRequest, question: str, step: str, text: str) -> ChatResult:
        claim = parse_step(step)
        if claim is not None:
            skill: str | None = claim.skill
        else:
            task = identify_task(question)
            skill = task_skills(task)[0] if task else None
        rng = self._rng("skill", text, None)
        if skill is not None and rng.random() < self.config.noise.wrong_skill:
            skill = rng.choice([s for s in SKILL_NAMES if s != skill])
        phrase = rng.choice(skill_phrases(skill)) if skill else FALLBACK_SKILL_PHRASE
        if _wants_json(request):
            return ChatResult(text=json.dumps({"skill": phrase}))
        return ChatResult(text=phrase)

    def _annotate(self, request: ChatRequest, instruction: str, answer: str, text: str) -> ChatResult:
        task = identify_task(instruction)
        if task is not None:
            skills = list(task_skills(task))
        else:
            claims = [parse_step(s) for s in split_steps(answer)[0]]
            skills = list(dict.fromkeys(c.skill for c in claims if c is not None))
        rng = self._rng("annotate", text, None)
        if skills and rng.random() < self.config.noise.wrong_skill:
            skills[0] = rng.choice([s for s in SKILL_NAMES if s not in skills])
        phrases = [rng.choice(skill_phrases(s)) for s in skills] or [FALLBACK_SKILL_PHRASE]
        if _wants_json(request):
            return ChatResult(text=json.dumps({"skills": phrases}))
        return ChatResult(text="; ".join(phrases))

    def _attempt_suffix(self, text: str) -> str:
        """``""`` for a request's first attempt (and always, when faults are per request), ``#k`` for attempt k."""
        if not self.config.noise.per_attempt:
            return ""
        if len(self._attempts) > 200_000:
            self._attempts.clear()
        k = self._attempts.get(text, 0)
        self._attempts[text] = k + 1
        return f"#{k}" if k else ""

    def _rng(self, purpose: str, text: str, seed: int | None) -> random.Random:
        h = hashlib.sha256(f"{self.config.seed}|{purpose}|{seed}|{text}".encode()).hexdigest()
        return random.Random(int(h[:16], 16))


def _user_text(request: ChatRequest) -> str:
    users = [m.get("content", "") for m in request.messages if m.get("role") == "user"]
    if not users:
        raise EngineError("world teacher: the request has no user message", status=400)
    return str(users[-1])


def _wants_json(request: ChatRequest) -> bool:
    rf = request.response_format or {}
    return rf.get("type") in ("json_object", "json_schema")


def _step_holds(step: str, scene: Scene) -> bool:
    claim = parse_step(step)
    return claim is not None and check_step(claim, scene)


def _supported_options(step: str, options: tuple[str, ...], hint: int) -> list[int]:
    """The options a wrong step argues for: those sharing the most words with it (never the hinted
    option, which the wrong step argues against); all other options when none shares a word."""
    others = [i for i in range(len(options)) if i != hint]
    if len(others) == 1:
        return others
    step_words = {w.lower() for w in split_words(step)}
    scores = {i: len({w.lower() for w in split_words(options[i])} & step_words) for i in others}
    best = max(scores.values())
    if best == 0:
        return others
    return [i for i in others if scores[i] == best]
