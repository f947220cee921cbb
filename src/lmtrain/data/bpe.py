"""Train a GPT-2 style byte-level BPE tokenizer on a corpus and wrap it for transformers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from lmtrain.data.readers import check_encoding_errors, is_text_file, iter_documents, iter_text_pieces, split_pieces
from lmtrain.errors import ConfigError

if TYPE_CHECKING:  # transformers is slow to import
    from transformers import PreTrainedTokenizerFast

__all__ = ["SPECIAL_TOKENS", "train_bpe_tokenizer"]

EOS_TOKEN, PAD_TOKEN, MASK_TOKEN = "<|endoftext|>", "<pad>", "<mask>"
SPECIAL_TOKENS = [EOS_TOKEN, PAD_TOKEN, MASK_TOKEN]


def _training_texts(docs: Iterator[str]) -> Iterator[str]:
    # The trainer parallelises over items; whole-book documents would use one core.
    for doc in docs:
        yield from split_pieces(doc)


def _first_texts(files: Sequence[Path], text_column: str, errors: str, max_chars: int) -> Iterator[str]:
    """Pieces of the files' text, in order, until about ``max_chars`` characters (a .txt is read in pieces,
    so a huge file is never held whole)."""
    budget = max_chars
    for f in files:
        pieces = (
            iter_text_pieces(f, errors)
            if is_text_file(f)
            else _training_texts(iter_documents([f], text_column=text_column, encoding_errors=errors))
        )
        for piece in pieces:
            yield piece
            budget -= len(piece)
            if budget <= 0:
                return


def train_bpe_tokenizer(
    files: Sequence[Path],
    vocab_size: int = 8192,
    text_column: str = "text",
    encoding_errors: str = "strict",
    max_chars: int | None = None,
) -> "PreTrainedTokenizerFast":
    """Train a GPT-2 style byte-level BPE on ``files`` (on their first ``max_chars`` characters when given,
    as a streamed run does) and wrap it for transformers."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ConfigError(
            f"vocab_size {vocab_size} is too small for a byte-level BPE "
            f"(it needs {len(alphabet) + len(SPECIAL_TOKENS)} base tokens); pass --vocab_size 512 or more"
        )
    check_encoding_errors(encoding_errors)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,  # ids 0, 1, 2
        initial_alphabet=alphabet,
        show_progress=False,
    )
    if max_chars is not None:
        texts = _first_texts(files, text_column, encoding_errors, max_chars)
    else:
        texts = _training_texts(iter_documents(files, text_column=text_column, encoding_errors=encoding_errors))
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=EOS_TOKEN,
        bos_token=EOS_TOKEN,
        unk_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        mask_token=MASK_TOKEN,
        # decode(encode(text)) must give back text exactly
        clean_up_tokenization_spaces=False,
    )
