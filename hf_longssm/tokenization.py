"""A byte-level tokenizer that needs no files: models trained here read any text as bytes.

It is a transformers `PreTrainedTokenizerFast` over a `tokenizers` byte-level model with no merges, so it saves a
`tokenizer.json` that `AutoTokenizer.from_pretrained(output_dir)` loads back, on any machine, without hf_longssm.
"""

from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast


# Token id = byte value + 1; id 0 is EOS (and pad, as in Mamba configs).
BYTE_VOCAB_SIZE = 257
EOS_TOKEN = "<eos>"
# Folders saved by hf_longssm before the tokenizer became a transformers one hold only this marker file.
LEGACY_MARKER_FILE = "hf_longssm_tokenizer.json"


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from bytes to printable characters, the alphabet of byte-level `tokenizers` models."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def byte_tokenizer() -> PreTrainedTokenizerFast:
    """The byte tokenizer: id = UTF-8 byte + 1 for every text, id 0 = `<eos>` (EOS and pad, never produced by
    encoding text), 257 ids, no files needed.

    Example:
        >>> tokenizer = byte_tokenizer()
        >>> tokenizer("hi", add_special_tokens=False)["input_ids"]
        [105, 106]
    """
    vocab = {EOS_TOKEN: 0} | {char: byte + 1 for byte, char in _bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], fuse_unk=False))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    # `split_special_tokens`: the text "<eos>" inside a document is five bytes like any other, never the EOS id (which
    # only the data pipeline inserts between documents); saved in tokenizer_config.json, so reloads keep it.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token=EOS_TOKEN, pad_token=EOS_TOKEN, split_special_tokens=True
    )
