"""Offline word-level T5-style tokenizer for the bundled tiny model.

Built in memory from a fixed vocabulary (every caption word plus a few common ones) with the ``tokenizers``
library, wrapped as a ``transformers`` fast tokenizer. Ids follow T5: ``<pad>=0``, ``</s>=1``, ``<unk>=2``, and
``</s>`` is appended to every sequence. Saved inside the pipeline folder (``tokenizer/tokenizer.json``), so
``WanPipeline.from_pretrained`` reloads it with no network access.
"""

from __future__ import annotations

from .data import BACKGROUNDS, COLORS, DIRECTIONS, SHAPES

__all__ = ["VOCAB_WORDS", "build_tokenizer", "build_word_level_tokenizer"]

_TEMPLATE_WORDS = "a an the moving on background of in video".split()
_EXTRA_WORDS = (
    "and with to is at from left right up down circle square triangle diamond shape object ball box "
    "slow slowly fast quickly plain textured dark light white orange pink cyan brown"
).split()

# Order matters (ids are saved with the weights): template words, then the attribute words, then extras.
VOCAB_WORDS: tuple[str, ...] = tuple(
    dict.fromkeys(_TEMPLATE_WORDS + list(COLORS) + list(SHAPES) + list(DIRECTIONS) + list(BACKGROUNDS) + _EXTRA_WORDS)
)


def build_word_level_tokenizer(words, model_max_length: int = 512, lowercase: bool = False):
    """A ``transformers`` fast tokenizer over ``words`` with T5 ids (``<pad>=0``, ``</s>=1``, ``<unk>=2``, ``</s>``
    appended); splits on whitespace/punctuation, unknown words map to ``<unk>``. No files, no network."""
    from tokenizers import Tokenizer, normalizers
    from tokenizers.models import WordLevel
    from tokenizers.pre_tokenizers import Whitespace
    from tokenizers.processors import TemplateProcessing
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    if lowercase:
        tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = Whitespace()
    tok.post_processor = TemplateProcessing(single="$A </s>", pair="$A </s> $B </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        eos_token="</s>",
        unk_token="<unk>",
        model_max_length=model_max_length,
        padding_side="right",
    )


def build_tokenizer(model_max_length: int = 512):
    """The bundled model's tokenizer (lower-cases, splits on whitespace/punctuation, unknown → ``<unk>``)."""
    return build_word_level_tokenizer(VOCAB_WORDS, model_max_length, lowercase=True)
