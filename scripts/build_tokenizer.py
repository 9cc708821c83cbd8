"""Build the Qwen3-VL tokenizer files offline from the `qwen.tiktoken` ranks that the PyPI package `dashscope`
ships, and write them to the repository root (tokenizer.json, tokenizer_config.json, vocab.json, merges.txt).

    pip install dashscope tokenizers tiktoken   # tiktoken only for --verify
    python -m xr0.scripts.build_tokenizer [--ranks path/to/qwen.tiktoken] [--output .] [--verify 2000]

Facts used (Qwen2/Qwen3 vocabulary): the 151,643 regular tokens are byte-level BPE tokens whose ids are their ranks; text is
split by the Qwen2 pre-tokenizer pattern (one digit per piece) before BPE; the 26 added tokens follow at ids
151,643-151,668. Each regular token of two or more bytes gets exactly one merge: the split that BPE itself
reaches on that token's bytes using only lower-ranked tokens (151,387 merges). Re-running gives identical files.
"""

import base64
import json
import logging
import os
import random
import sys
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers

from xr0_common.cli import ArgumentParser

logger = logging.getLogger("xr0.build_tokenizer")

PRETOKENIZE_PATTERN = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
NUM_REGULAR_TOKENS = 151643
# (content, special): ids 151643.. in this order. Special tokens are never split and are skipped when decoding
# with skip_special_tokens; the others are whole tokens that still decode.
ADDED_TOKENS = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
    ("<tool_response>", False),
    ("</tool_response>", False),
    ("<think>", False),
    ("</think>", False),
]

# A chat template written for this repository: system/user/assistant turns whose content is a string or a list
# of {"type": "text"|"image"|"video"} items, in the Qwen3-VL turn format.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['content'] is string -%}{{- message['content'] -}}"
    "{%- else -%}{%- for item in message['content'] -%}"
    "{%- if item['type'] == 'image' or 'image' in item -%}{{- '<|vision_start|><|image_pad|><|vision_end|>' -}}"
    "{%- elif item['type'] == 'video' or 'video' in item -%}{{- '<|vision_start|><|video_pad|><|vision_end|>' -}}"
    "{%- elif 'text' in item -%}{{- item['text'] -}}{%- endif -%}"
    "{%- endfor -%}{%- endif -%}"
    "{{- '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}"
)


def bytes_to_unicode() -> dict:
    """The byte-level alphabet: printable latin-1 bytes map to themselves, the other 68 bytes to code points
    from 256 upward, so every byte sequence becomes a printable string."""
    printable = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), 256))
    )
    mapping, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            mapping[byte] = chr(byte)
        else:
            mapping[byte] = chr(256 + extra)
            extra += 1
    return mapping


def default_ranks_path() -> Path:
    try:
        import dashscope
    except ImportError:
        sys.exit(
            "`dashscope` is not installed: `pip install dashscope`, or pass --ranks path/to/qwen.tiktoken."
        )
    return Path(dashscope.__file__).parent / "resources" / "qwen.tiktoken"


def read_ranks(path: Path) -> dict:
    ranks = {}
    for line in path.read_text().splitlines():
        if line:
            token, rank = line.split()
            ranks[base64.b64decode(token)] = int(rank)
    if sorted(ranks.values()) != list(range(NUM_REGULAR_TOKENS)):
        sys.exit(f"{path}: expected ranks 0..{NUM_REGULAR_TOKENS - 1}, got {len(ranks)} tokens.")
    return ranks


def bpe_split(token: bytes, ranks: dict) -> tuple:
    """The two parts BPE merges last when it encodes `token` with only the tokens ranked below it."""
    limit = ranks[token]
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best = None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < limit and (best is None or rank < best[1]):
                best = (i, rank)
        if best is None:
            raise ValueError(f"token {token!r} (rank {limit}) is not reachable by BPE from lower ranks")
        i = best[0]
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    return parts[0], parts[1]


def build(ranks: dict):
    to_unicode = bytes_to_unicode()

    def text(token: bytes) -> str:
        return "".join(to_unicode[b] for b in token)

    vocab = {text(token): rank for token, rank in sorted(ranks.items(), key=lambda item: item[1])}
    merges = [
        (text(left), text(right))
        for token, _ in sorted(ranks.items(), key=lambda item: item[1])
        if len(token) > 1
        for left, right in [bpe_split(token, ranks)]
    ]
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.add_tokens(
        [AddedToken(content, special=special, normalized=False) for content, special in ADDED_TOKENS]
    )
    for offset, (content, _) in enumerate(ADDED_TOKENS):
        assert tokenizer.token_to_id(content) == NUM_REGULAR_TOKENS + offset, content
    return tokenizer, vocab, merges


def tokenizer_config() -> dict:
    added = {
        str(NUM_REGULAR_TOKENS + i): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for i, (content, special) in enumerate(ADDED_TOKENS)
    }
    return {
        "tokenizer_class": "Qwen2Tokenizer",
        "added_tokens_decoder": added,
        "additional_special_tokens": [
            c for c, special in ADDED_TOKENS if special and c not in ("<|endoftext|>", "<|im_end|>")
        ],
        "bos_token": None,
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "unk_token": None,
        "errors": "replace",
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "add_prefix_space": False,
        "model_max_length": 262144,
        "chat_template": CHAT_TEMPLATE,
    }


def sample_texts(count: int, seed: int = 0) -> list:
    """Mixed texts for --verify: English, Chinese, digits, code, whitespace runs, emoji, special-looking text."""
    rng = random.Random(seed)
    pieces = [
        "Hello world",
        "pick up the black bowl",
        "Put both the alphabet soup and the tomato sauce in the basket.",
        "机器人抓取红色的杯子",
        "小米机器人",
        "坐标 3.14159 和 -2.71828",
        "12345678901234567890",
        "   leading spaces",
        "tabs\tand\nnewlines\r\n",
        "def f(x):\n    return x**2  # square",
        "emoji 🤖🦾 ok",
        "naïve café façade",
        "ÅΩ≈ç√∫",
        "😀😃😄",
        "<|im_start|> inside text",
        "x" * 40,
        "1,000,000",
        "año 2026年11月25日",
        " ' s 're",
        "Привет мир",
        "こんにちは世界",
        "한국어 텍스트",
        "\u00a0nbsp",
        "a\u0301 combining",
    ]
    texts = []
    for _ in range(count):
        parts = rng.sample(pieces, rng.randint(1, 4))
        if rng.random() < 0.3:
            parts.append("".join(chr(rng.randint(32, 0x9FFF)) for _ in range(rng.randint(1, 20))))
        texts.append(rng.choice(["", " ", "\n"]).join(parts))
    return texts


def verify(tokenizer: Tokenizer, ranks: dict, count: int) -> None:
    import unicodedata

    import tiktoken

    specials = {content: NUM_REGULAR_TOKENS + i for i, (content, _) in enumerate(ADDED_TOKENS)}
    reference = tiktoken.Encoding(
        "qwen-ranks", pat_str=PRETOKENIZE_PATTERN, mergeable_ranks=ranks, special_tokens=specials
    )
    mismatches = 0
    for text in sample_texts(count):
        text = unicodedata.normalize("NFC", text)
        ours = tokenizer.encode(text, add_special_tokens=False).ids
        if (
            ours != reference.encode(text, allowed_special="all")
            or tokenizer.decode(ours, skip_special_tokens=False) != text
        ):
            mismatches += 1
            logger.error("mismatch: %r", text)
    print(f"verified against tiktoken on {count} texts: {mismatches} mismatches")
    if mismatches:
        sys.exit(1)


def main(argv=None) -> None:
    parser = ArgumentParser(description=__doc__)
    parser.add_argument(
        "--ranks", type=Path, default=None, help="qwen.tiktoken (default: the one dashscope ships)"
    )
    parser.add_argument("--output", type=Path, default=Path(__file__).resolve().parents[1])
    parser.add_argument("--verify", type=int, default=0, help="compare with tiktoken on this many texts")
    args = parser.parse_args(argv)

    ranks = read_ranks(args.ranks or default_ranks_path())
    tokenizer, vocab, merges = build(ranks)
    os.makedirs(args.output, exist_ok=True)
    tokenizer.save(str(args.output / "tokenizer.json"))
    (args.output / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False, separators=(",", ":")))
    (args.output / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))
    (args.output / "tokenizer_config.json").write_text(
        json.dumps(tokenizer_config(), ensure_ascii=False, indent=2) + "\n"
    )
    logger.info(
        f"wrote {len(vocab)} regular tokens, {len(merges)} merges, {len(ADDED_TOKENS)} added tokens to {args.output}"
    )
    if args.verify:
        verify(tokenizer, ranks, args.verify)


if __name__ == "__main__":
    main()
