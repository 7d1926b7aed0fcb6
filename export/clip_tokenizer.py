"""A CLIP folder's tokenizer as the bundle's tokenizer.json: the folder's own (tokenizer.json, or
vocab.json + merges.txt through transformers), or, for an open_clip folder, open_clip's CLIP BPE
(bpe_simple_vocab_16e6.txt.gz, shipped in the open-clip-torch wheel) written as the same
`tokenizers` pipeline transformers uses for CLIP. Either way it pads and truncates to the model's
context itself (runtime.tokens), and the import's parity check compares its ids, through the ONNX
text tower, with the source library's own tokenizer and model.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
from tokenizers.models import BPE

from export.clip_folders import ClipFolder
from export.folders import FolderError
from training.data.tokenizer import set_context_length

# CLIP's word pattern: contractions, letter runs, single digits, runs of other symbols (OpenAI's, as
# open_clip's SimpleTokenizer and transformers' CLIPConverter both write it).
CLIP_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
OPEN_CLIP_MERGES = 49152 - 256 - 2  # merges open_clip's SimpleTokenizer reads from its BPE file
OPEN_CLIP_SPECIALS = ("<start_of_text>", "<end_of_text>")  # its last two ids
OPEN_CLIP_PAD_ID = 0  # open_clip fills a text's row with zeros after its end token


def open_clip_bpe_tokenizer(bpe_file: Path) -> Tokenizer:
    """open_clip's SimpleTokenizer as a `tokenizers` pipeline: its vocabulary (the 256 byte symbols,
    the same with '</w>', one token per merge, then the start and end tokens) and merges from
    `bpe_file`; lower-cased, whitespace collapsed; [start] tokens [end]."""
    lines = gzip.open(bpe_file).read().decode("utf-8").split("\n")[1 : OPEN_CLIP_MERGES + 1]
    merges = [tuple(line.split()) for line in lines]
    # bytes_to_unicode's symbols in OpenAI's order, which fixes the first 512 ids: the printable bytes
    # stand for themselves and the others for 256 and up, so their order is their code points'
    symbols = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + list(OPEN_CLIP_SPECIALS)
    tokenizer = Tokenizer(BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, continuing_subword_prefix="",
                              end_of_word_suffix="</w>", fuse_unk=False))
    tokenizer.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                                 normalizers.Lowercase()])
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(CLIP_PATTERN), behavior="removed", invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    start, end = OPEN_CLIP_SPECIALS
    tokenizer.add_special_tokens(list(OPEN_CLIP_SPECIALS))
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{start} $A {end}", special_tokens=[(start, len(vocab) - 2), (end, len(vocab) - 1)])
    return tokenizer


def bundle_tokenizer(folder: ClipFolder, bpe_file: Path | None = None) -> Tokenizer:
    """The folder's tokenizer, padding and truncating to exactly its context length. `bpe_file`:
    open_clip's BPE (open_clip folders; by default the one in the installed open-clip-torch)."""
    if folder.library == "open_clip":
        tokenizer = open_clip_bpe_tokenizer(bpe_file or _open_clip_bpe())
        return set_context_length(tokenizer, folder.context_length, tokenizer.id_to_token(OPEN_CLIP_PAD_ID))
    from transformers import AutoTokenizer  # lazy: heavy, and only an import needs it

    try:
        source = AutoTokenizer.from_pretrained(str(folder.path), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged tokenizer file fails in many ways; each is the folder's fault
        files = " + ".join(p.name for p in folder.tokenizer_files)
        raise FolderError(f"{folder.path}: transformers cannot read the tokenizer ({files}: {type(e).__name__}: {e})") from e
    backend = getattr(source, "backend_tokenizer", None)
    if backend is None:
        raise FolderError(f"{folder.path}: the tokenizer is not a `tokenizers` one ({type(source).__name__})")
    tokenizer = Tokenizer.from_str(backend.to_str())  # a copy, so the source's own settings stay as they are
    pad = source.pad_token or source.eos_token
    return set_context_length(tokenizer, folder.context_length, str(pad))


def _open_clip_bpe() -> Path:
    try:
        from open_clip.tokenizer import default_bpe
    except ImportError as e:
        raise FolderError("an open_clip folder needs open_clip's BPE vocabulary: pip install open-clip-torch") from e
    return Path(default_bpe())
