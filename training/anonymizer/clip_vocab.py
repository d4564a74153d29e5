"""CLIP's BPE tokenizer files, built offline from the vocabulary inside the `open_clip_torch` wheel.

The hub is never reachable here, so the tokenizer of the tiny base (and of anything else that needs CLIP's
real token ids) is rebuilt from `open_clip/bpe_simple_vocab_16e6.txt.gz`, the file OpenAI's CLIP and
open_clip tokenize with. The wheel is fetched at set-up time with the other media wheels
(`provision/media-wheels.txt`) and only opened as a zip, never installed.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zipfile
from pathlib import Path

OPEN_CLIP_PROJECT = "open_clip_torch"
OPEN_CLIP_VERSION = "3.3.0"
OPEN_CLIP_WHEEL_SHA256 = "c549ad5ed6bfc119cc11105033c0a2b9d7a2a4afeb40a58a09aab3da1a0043ce"
BPE_MEMBER = "open_clip/bpe_simple_vocab_16e6.txt.gz"
# The member's own hash, so a gz handed in directly (or from another open_clip release) is checked too.
BPE_GZ_SHA256 = "924691ac288e54409236115652ad4aa250f48203de50a9e4722a6ecd48d6804a"
ENV_VAR = "AUBERGINE_CLIP_BPE"  # a wheel or the gz, overriding the search under .cache/wheels

BOS = "<|startoftext|>"
EOS = "<|endoftext|>"
MODEL_MAX_LENGTH = 77
# CLIP keeps the first 49152 - 256 - 2 merges so that bytes + bytes</w> + merges + 2 specials = 49408 ids.
N_MERGES = 49152 - 256 - 2
VOCAB_SIZE = 2 * 256 + N_MERGES + 2

SETUP_HINT = (
    "run `make setup`, or by hand: `uvx --from pip pip download --no-deps --only-binary=:all: "
    "--python-version 3.12 --require-hashes -r provision/media-wheels.txt -d .cache/wheels` "
    f"(or point {ENV_VAR} at an {OPEN_CLIP_PROJECT} wheel or at bpe_simple_vocab_16e6.txt.gz)"
)


class ClipVocabError(ValueError):
    """The CLIP vocabulary cannot be found or is not the pinned file; the message says what to run."""


def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable character, CLIP/GPT-2 style: printable Latin-1 bytes keep their own character and
    the rest are moved to code points from 256 up, so no token contains whitespace or control bytes."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping: dict[int, str] = {}
    extra = 0
    for b in range(256):
        if b in keep:
            mapping[b] = chr(b)
        else:
            mapping[b] = chr(256 + extra)
            extra += 1
    # CLIP orders the vocabulary as the kept bytes first, then the moved ones.
    return {b: mapping[b] for b in [*keep, *(b for b in range(256) if b not in keep)]}


def read_bpe_gz(source: str | os.PathLike) -> bytes:
    """The gz bytes from a wheel (zip) or from the gz itself, checked against the pinned sha256."""
    path = Path(source)
    if not path.is_file():
        raise ClipVocabError(f"{path}: no such file; {SETUP_HINT}")
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            try:
                data = zf.read(BPE_MEMBER)
            except KeyError:
                raise ClipVocabError(f"{path}: has no {BPE_MEMBER}; is it an {OPEN_CLIP_PROJECT} wheel?") from None
    else:
        data = path.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != BPE_GZ_SHA256:
        raise ClipVocabError(f"{path}: BPE vocabulary sha256 {digest} is not the pinned {BPE_GZ_SHA256}; {SETUP_HINT}")
    return data


def clip_merges(gz_bytes: bytes) -> list[str]:
    """The merges CLIP uses: the file's lines after its header, cut to N_MERGES."""
    lines = gzip.decompress(gz_bytes).decode("utf-8").split("\n")
    merges = lines[1 : N_MERGES + 1]
    if len(merges) != N_MERGES or any(len(m.split(" ")) != 2 for m in merges):
        raise ClipVocabError(f"the BPE file has {len(merges)} usable merges, expected {N_MERGES} pairs")
    return merges


def clip_vocab(merges: list[str]) -> dict[str, int]:
    """Token -> id in CLIP's order: bytes, bytes + '</w>', merged pairs, then the two special tokens."""
    chars = list(bytes_to_unicode().values())
    tokens = [*chars, *(c + "</w>" for c in chars), *(m.replace(" ", "") for m in merges), BOS, EOS]
    vocab = {tok: i for i, tok in enumerate(tokens)}
    if len(vocab) != VOCAB_SIZE:
        raise ClipVocabError(f"CLIP vocabulary has {len(vocab)} distinct tokens, expected {VOCAB_SIZE}")
    return vocab


def _write_text(path: Path, text: str) -> None:
    # Written beside, then renamed: a killed run never leaves a half vocabulary that loads wrongly.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def clip_tokenizer_files(source: str | os.PathLike, out_dir: str | os.PathLike, pad_token: str = EOS) -> Path:
    """Write vocab.json, merges.txt, tokenizer_config.json and special_tokens_map.json for
    `CLIPTokenizer.from_pretrained(out_dir)`, from an open_clip_torch wheel or its bpe gz.

    `pad_token` is CLIP's own choice by default; SD2's tokenizers pad with "!" instead.
    """
    merges = clip_merges(read_bpe_gz(source))
    vocab = clip_vocab(merges)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    specials = {"bos_token": BOS, "eos_token": EOS, "unk_token": EOS, "pad_token": pad_token}
    _write_text(out / "vocab.json", json.dumps(vocab, ensure_ascii=False))
    # The header line matters: readers of merges.txt skip a first line starting with "#version".
    _write_text(out / "merges.txt", "#version: 0.2\n" + "\n".join(merges) + "\n")
    config = {
        "tokenizer_class": "CLIPTokenizer",
        # Without it the tokenizer reports a huge max length, the pipeline pads prompts to it and the
        # text encoder's 77 position embeddings overflow.
        "model_max_length": MODEL_MAX_LENGTH,
        "do_lower_case": True,
        "errors": "replace",
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": True,
        **specials,
    }
    _write_text(out / "tokenizer_config.json", json.dumps(config, indent=2, sort_keys=True) + "\n")
    _write_text(out / "special_tokens_map.json", json.dumps(specials, indent=2, sort_keys=True) + "\n")
    return out


def find_clip_bpe_source(root: str | os.PathLike = ".") -> Path | None:
    """Where the vocabulary comes from: $AUBERGINE_CLIP_BPE, else the pinned wheel under
    `<root>/.cache/wheels`; None when neither is there (callers say what to run, see SETUP_HINT)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env)
    wheels = sorted((Path(root) / ".cache" / "wheels").glob(f"{OPEN_CLIP_PROJECT}-{OPEN_CLIP_VERSION}-*.whl"))
    return wheels[0] if wheels else None
