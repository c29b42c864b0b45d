"""Tiny word-level CLIP and T5 tokenizers built locally from the zoo's prompt vocabulary.

transformers 5 tokenizers build their own backend from ``vocab``/``merges``: CLIP takes a BPE
vocabulary whose word ends carry ``</w>`` and merges given as tuples; T5 takes a Unigram vocabulary
list (``extra_ids=0``). Every word of the prompt vocabulary becomes (ideally) one token; single
characters stay in the vocabulary as a fallback so that unseen words still tokenize.
"""

from __future__ import annotations

import string

from transformers import CLIPTokenizer, T5Tokenizer

from harness.zoo.digits_data import PROMPT_WORDS

_CHARS = list(string.ascii_lowercase + string.digits + ",.-'")


def prompt_vocabulary(extra_words: list[str] | None = None) -> list[str]:
    """The words the tiny text encoders know as single tokens (sorted, deduplicated)."""
    words = set(PROMPT_WORDS) | set(extra_words or [])
    return sorted(w.lower() for w in words)


def build_clip_tokenizer(extra_words: list[str] | None = None, model_max_length: int = 16) -> CLIPTokenizer:
    """A CLIPTokenizer whose BPE merges rebuild every vocabulary word left to right."""
    specials = ["<|startoftext|>", "<|endoftext|>"]
    vocab: dict[str, int] = {}
    for tok in specials + _CHARS + [c + "</w>" for c in _CHARS]:
        vocab.setdefault(tok, len(vocab))
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    for word in prompt_vocabulary(extra_words):
        if len(word) == 1:
            continue
        pieces = [*list(word[:-1]), word[-1] + "</w>"]
        left = pieces[0]
        for right in pieces[1:]:
            pair = (left, right)
            merged = left + right
            if pair not in seen:
                seen.add(pair)
                merges.append(pair)
            vocab.setdefault(merged, len(vocab))
            left = merged
    tok = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=model_max_length)
    return tok


def build_t5_tokenizer(extra_words: list[str] | None = None, model_max_length: int = 16) -> T5Tokenizer:
    """A T5Tokenizer with a Unigram vocabulary of ``▁word`` pieces (plus characters as fallback)."""
    vocab: list[tuple[str, float]] = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    for word in prompt_vocabulary(extra_words):
        vocab.append(("▁" + word, -1.0))
    for c in _CHARS:
        vocab.append((c, -5.0))
        vocab.append(("▁" + c, -4.0))
    # deduplicate while keeping the first score
    out: list[tuple[str, float]] = []
    names: set[str] = set()
    for piece, score in vocab:
        if piece not in names:
            names.add(piece)
            out.append((piece, score))
    return T5Tokenizer(vocab=out, extra_ids=0, model_max_length=model_max_length)
