"""The skills world's student: a tiny LLaVA (CLIP vision tower + Llama) built from config, no hub.

The student is what edray diagnoses and tunes. In the skills world it must be small enough to pretrain
on a laptop CPU in minutes and still genuinely learn, and it must load unchanged in every engine edray
uses: ``transformers`` (``AutoProcessor`` / ``AutoModelForImageTextToText``, ``trust_remote_code`` off)
and vLLM. :func:`build_student` writes such a folder with random weights;
:mod:`edray.world.pretrain` then trains it on the world's generic mix.

Weight names: the folder is written in the original LLaVA checkpoint layout
(``language_model.model.*``, ``language_model.lm_head.*``, ``vision_tower.vision_model.*``,
``multi_modal_projector.*``). transformers maps that layout onto its current module tree when it loads,
and vLLM's LLaVA loader expects a ``vision_model`` level inside the CLIP tower that transformers 5 no
longer writes, so this is the one layout both loaders read. :func:`export_for_vllm` rewrites any
folder saved by ``save_pretrained`` (for instance a fine-tuned student) into it.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from edray.config import EdrayModel
from edray.schemas import IMAGE_PLACEHOLDER

PAD_TOKEN = "<pad>"
BOS_TOKEN = "<bos>"
EOS_TOKEN = "<eos>"
UNK_TOKEN = "<unk>"
ROLE_TOKENS = {"system": "<|system|>", "user": "<|user|>", "assistant": "<|assistant|>"}
NEWLINE = "\n"
_SPACE = "\u2581"
_SPECIAL_SPLIT = "(" + "|".join(re.escape(t) for t in (PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, IMAGE_PLACEHOLDER, *ROLE_TOKENS.values(), NEWLINE)) + ")"

# A turn is ``<|role|>`` + content + ``<eos>`` with no spaces added, so decoding restores the text
# exactly; generation stops at ``<eos>`` after the assistant's answer. Content may be a string holding ``<image>`` placeholders (edray's message schema) or a list
# of ``{"type": "image"}`` / ``{"type": "text", "text": ...}`` parts (the transformers convention).
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>' }}"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{% if part['type'] == 'image' %}{{ '<image>' }}"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}"
    "{{ eos_token }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)


class StudentConfig(EdrayModel):
    """Architecture of the tiny student (a LLaVA: CLIP vision tower, linear projector, Llama).

    Defaults are the configuration measured to learn the world's skills on 2 CPU cores: 32x32 images
    cut into 8x8 patches (16 image tokens), hidden size 128 with 2 layers on both sides, head size 32
    (vLLM's CPU attention needs at least 32), about 0.66M parameters.
    """

    image_size: int = Field(32, ge=8, le=512, description="Side of the square input image in pixels.")
    patch_size: int = Field(8, ge=2, le=64, description="Side of a vision patch; image_size must be a multiple.")
    vision_hidden: int = Field(128, ge=32, le=2048, description="Hidden size of the CLIP vision tower.")
    vision_layers: int = Field(2, ge=1, le=24, description="Transformer layers in the vision tower.")
    vision_heads: int = Field(4, ge=1, le=32, description="Attention heads in the vision tower.")
    vision_ffn: int = Field(256, ge=32, le=8192, description="MLP size of the vision tower.")
    text_hidden: int = Field(128, ge=32, le=4096, description="Hidden size of the Llama language model.")
    text_layers: int = Field(2, ge=1, le=32, description="Decoder layers of the language model.")
    text_heads: int = Field(4, ge=1, le=32, description="Attention heads of the language model.")
    text_kv_heads: int | None = Field(
        None, ge=1, le=32, description="Key/value heads (grouped-query attention); null means text_heads."
    )
    text_ffn: int = Field(256, ge=32, le=16384, description="MLP size of the language model.")
    max_length: int = Field(256, ge=32, le=8192, description="Maximum sequence length (image tokens included).")
    vocab_min_frequency: int = Field(1, ge=1, le=1000, description="Words seen fewer times are left out of the vocabulary.")
    seed: int = Field(0, ge=0, description="Seed of the random initial weights.")

    @model_validator(mode="after")
    def _check_shapes(self) -> "StudentConfig":
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        for side, hidden, heads in (("vision", self.vision_hidden, self.vision_heads), ("text", self.text_hidden, self.text_heads)):
            if hidden % heads:
                raise ValueError(f"{side}_hidden {hidden} is not a multiple of {side}_heads {heads}")
            if hidden // heads < 32:
                raise ValueError(
                    f"{side} head size {hidden // heads} (= {side}_hidden / {side}_heads) is below 32, "
                    "which vLLM's CPU attention cannot serve"
                )
        kv = self.text_kv_heads or self.text_heads
        if self.text_heads % kv:
            raise ValueError(f"text_heads {self.text_heads} is not a multiple of text_kv_heads {kv}")
        if self.max_length <= self.image_tokens:
            raise ValueError(f"max_length {self.max_length} leaves no room after {self.image_tokens} image tokens")
        return self

    @property
    def image_tokens(self) -> int:
        """Tokens one image occupies in the language model's sequence."""
        return (self.image_size // self.patch_size) ** 2

    @classmethod
    def ci(cls, **overrides: Any) -> "StudentConfig":
        """A smaller student for tests: hidden 64 (head size 32) on both sides, one vision layer."""
        values: dict[str, Any] = dict(
            image_size=32, patch_size=8, vision_hidden=64, vision_layers=1, vision_heads=2, vision_ffn=128,
            text_hidden=64, text_layers=2, text_heads=2, text_ffn=128, max_length=128,
        )
        values.update(overrides)
        return cls(**values)


def build_tokenizer(texts: Iterable[str], min_frequency: int = 1, model_max_length: int = 256) -> Any:
    """Train a word-level tokenizer on ``texts`` and wrap it for transformers.

    Words keep their leading space as a ``▁`` prefix and punctuation is split off, so decoding restores
    the text exactly (``"Step 1: red. Answer: B"`` round-trips). ``<image>``, the role markers and
    pad/bos/eos/unk are special tokens; ``"\\n"`` is its own token. Words never seen become ``<unk>``.

    Args:
        texts: the corpus (the world's vocabulary and prompts); every word the student must read or
            write should occur at least ``min_frequency`` times.
        min_frequency: minimum count for a word to enter the vocabulary.
        model_max_length: the tokenizer's maximum length.

    Returns:
        A ``PreTrainedTokenizerFast`` with the chat template set.

    Raises:
        ValueError: ``texts`` is empty.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    corpus = [t for t in texts if t]
    if not corpus:
        raise ValueError("build_tokenizer: no texts to learn a vocabulary from")
    specials = [PAD_TOKEN, BOS_TOKEN, EOS_TOKEN, UNK_TOKEN, IMAGE_PLACEHOLDER, *ROLE_TOKENS.values()]
    # Tabs and carriage returns become spaces; newlines are kept as their own token (step-by-step
    # answers are one step per line).
    normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"[\t\r]"), " ")])
    pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme="first", split=True),
         pre_tokenizers.Punctuation(behavior="isolated")]
    )
    counts: dict[str, int] = {}
    skip = {*specials, NEWLINE}
    for text in corpus:
        for section in re.split(_SPECIAL_SPLIT, text):
            if not section or section in skip:
                continue
            for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(section)):
                counts[piece] = counts.get(piece, 0) + 1
    words = {w for w, c in counts.items() if c >= min_frequency}
    # Every word also without its leading-space marker (it appears so right after punctuation, as in
    # "(A)"), and the bare marker itself: no word of the corpus can then become <unk>.
    words |= {w[1:] for w in words if w.startswith(_SPACE) and len(w) > 1} | {_SPACE}
    vocab = {tok: i for i, tok in enumerate([*specials, NEWLINE, *sorted(words - skip)])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    tok.normalizer = normalizer
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.Metaspace(replacement=_SPACE, prepend_scheme="first", split=True)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    tok.add_tokens([AddedToken(NEWLINE, normalized=False)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        unk_token=UNK_TOKEN,
        extra_special_tokens={"image_token": IMAGE_PLACEHOLDER},
        model_max_length=model_max_length,
        padding_side="left",
        clean_up_tokenization_spaces=False,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def build_processor(cfg: StudentConfig, tokenizer: Any) -> Any:
    """A LLaVA processor: CLIP-style image processor at ``cfg.image_size`` plus ``tokenizer``.

    Each ``<image>`` in the prompt expands to ``cfg.image_tokens`` image tokens (the CLS output of the
    vision tower is dropped, as in LLaVA's ``default`` feature strategy).

    Pixels are scaled to [0, 1] (mean 0, std 1) rather than CLIP-normalised. ``AutoProcessor`` loads the
    torchvision backend where torchvision is installed and the PIL one where it is not, and the two
    normalise with different float arithmetic; with mean 0 and std 1 both compute exactly ``x / 255``,
    so the pixel values, and the student a seed pretrains, are the same in every install.
    """
    from transformers import LlavaProcessor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    side = cfg.image_size
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": side},
        crop_size={"height": side, "width": side},
        do_center_crop=True,
        do_convert_rgb=True,
        image_mean=[0.0, 0.0, 0.0],
        image_std=[1.0, 1.0, 1.0],
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=cfg.patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=CHAT_TEMPLATE,
    )


def build_model_config(cfg: StudentConfig, tokenizer: Any) -> Any:
    """The ``LlavaConfig`` of the student for ``tokenizer``'s vocabulary."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    vision = CLIPVisionConfig(
        hidden_size=cfg.vision_hidden,
        intermediate_size=cfg.vision_ffn,
        num_hidden_layers=cfg.vision_layers,
        num_attention_heads=cfg.vision_heads,
        image_size=cfg.image_size,
        patch_size=cfg.patch_size,
        projection_dim=cfg.vision_hidden,
    )
    text = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=cfg.text_hidden,
        intermediate_size=cfg.text_ffn,
        num_hidden_layers=cfg.text_layers,
        num_attention_heads=cfg.text_heads,
        num_key_value_heads=cfg.text_kv_heads or cfg.text_heads,
        head_dim=cfg.text_hidden // cfg.text_heads,
        max_position_embeddings=cfg.max_length,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_PLACEHOLDER),
        vision_feature_layer=-1,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
        image_seq_length=cfg.image_tokens,
        tie_word_embeddings=False,
    )
    config.pad_token_id = tokenizer.pad_token_id
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    return config


def build_student(out_dir: str | Path, cfg: StudentConfig, texts: Iterable[str]) -> Path:
    """Build the student with random weights and save it as a standard Hugging Face folder.

    The folder holds ``config.json``, ``model.safetensors`` (original LLaVA key layout, see the module
    docstring), the tokenizer, the processor and ``generation_config.json``; it loads with
    ``AutoProcessor.from_pretrained`` / ``AutoModelForImageTextToText.from_pretrained`` and in vLLM.

    Args:
        out_dir: folder to write (created; existing files are overwritten).
        cfg: the architecture.
        texts: corpus the tokenizer's vocabulary is learned from (see :func:`build_tokenizer`).

    Returns:
        ``out_dir`` as a ``Path``.
    """
    import torch
    from transformers import GenerationConfig, LlavaForConditionalGeneration

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(texts, min_frequency=cfg.vocab_min_frequency, model_max_length=cfg.max_length)
    processor = build_processor(cfg, tokenizer)
    config = build_model_config(cfg, tokenizer)
    torch.manual_seed(cfg.seed)
    model = LlavaForConditionalGeneration(config)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
        max_new_tokens=32,
    )
    model.save_pretrained(out, safe_serialization=True)
    processor.save_pretrained(out)
    export_for_vllm(out)
    (out / "student_config.json").write_text(json.dumps(cfg.model_dump(mode="json"), indent=2))
    return out


# transformers >= 4.52 writes the left names; the original LLaVA layout (right) is read by both
# transformers (through its checkpoint conversion mapping) and vLLM.
_LEGACY_PREFIXES: tuple[tuple[str, str], ...] = (
    (r"^model\.vision_tower\.(?!vision_model\.)", "vision_tower.vision_model."),
    (r"^model\.vision_tower\.", "vision_tower."),
    (r"^vision_tower\.(?!vision_model\.)", "vision_tower.vision_model."),
    (r"^model\.language_model\.", "language_model.model."),
    (r"^model\.multi_modal_projector\.", "multi_modal_projector."),
    (r"^lm_head\.", "language_model.lm_head."),
)


def legacy_key(name: str) -> str:
    """The original LLaVA checkpoint name of a weight named ``name`` by transformers 5."""
    for pattern, repl in _LEGACY_PREFIXES:
        new, n = re.subn(pattern, repl, name)
        if n:
            return new
    return name


def export_for_vllm(folder: str | Path) -> Path:
    """Rewrite a LLaVA folder's safetensors to the original LLaVA key layout, in place.

    Idempotent. Needed after any ``save_pretrained`` of a LLaVA (merged fine-tunes included) before
    vLLM loads it; transformers still loads the result.

    Args:
        folder: a folder holding ``model.safetensors`` or sharded ``model-*.safetensors`` files.

    Returns:
        ``folder`` as a ``Path``.

    Raises:
        FileNotFoundError: no safetensors file in ``folder``.
    """
    from safetensors import safe_open
    from safetensors.torch import save_file

    root = Path(folder)
    files = sorted(root.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors file in {root}")
    index_path = root / "model.safetensors.index.json"
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {legacy_key(k): f.get_tensor(k) for k in f.keys()}
        # Write beside and rename: the tensors above may still be memory-mapped from ``path``.
        tmp = path.with_name(f".{path.name}.tmp")
        save_file(tensors, str(tmp), metadata={**metadata, "format": "pt"})
        os.replace(tmp, path)
    if index_path.is_file():
        index = json.loads(index_path.read_text())
        index["weight_map"] = {legacy_key(k): v for k, v in index.get("weight_map", {}).items()}
        index_path.write_text(json.dumps(index, indent=2))
    return root


def world_texts(n: int = 2000, seed: int = 0) -> list[str]:
    """The skills world's tokenizer corpus: every word of :func:`edray.world.skills.vocabulary` (so no
    world word is ever ``<unk>``) plus ``n`` representative prompts and answers.

    Args:
        n: representative texts to add (word frequencies, and so vocabulary order, follow them).
        seed: corpus seed.

    Returns:
        Texts for :func:`build_tokenizer`.
    """
    from edray.world.skills import corpus_texts, vocabulary

    return [*vocabulary(), *corpus_texts(n, seed)]
