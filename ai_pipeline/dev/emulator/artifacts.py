"""The artefacts built-in models produce: small real PNG images and LLM-like token streams.

Everything here is a pure function of its arguments (prompt, seed, index), cached, so the same input
always yields the same bytes and a repeated download costs a dictionary lookup.
"""

from __future__ import annotations

import hashlib
import io
import random
import zlib
from functools import lru_cache

from PIL import Image, ImageDraw, ImageOps

IMAGE_SIZE = 64
CONTENT_TYPES: dict[str, str] = {
    ".png": "image/png",
    ".txt": "text/plain; charset=utf-8",
}

# Radial gradient computed once; each image recolours it, which keeps rendering well under 1 ms.
_GRADIENT = Image.radial_gradient("L").resize((IMAGE_SIZE, IMAGE_SIZE))

_WORDS = (
    "the a of light over quiet river city morning golden shadow wind across ancient forest "
    "bright glass mountain slowly dreams under silver sky window soft rain garden open road "
    "through distant harbor echoes warm stone evening clouds drift toward new horizon and "
    "with its every small world still"
)
_VOCABULARY = tuple(_WORDS.split())


def derived_seed(prompt: str) -> int:
    """The seed a model uses when the input gives none: stable for a prompt, like a fixed default."""
    return zlib.crc32(prompt.encode()) & 0x7FFFFFFF


@lru_cache(maxsize=4096)
def render_png(prompt: str, seed: int, index: int = 0) -> bytes:
    """A real 64x64 PNG, deterministic from (prompt, seed, index)."""
    digest = hashlib.sha256(f"{prompt}\0{seed}\0{index}".encode()).digest()
    inner, outer, accent = digest[0:3], digest[3:6], digest[6:9]
    image = ImageOps.colorize(_GRADIENT, black=tuple(inner), white=tuple(outer))
    draw = ImageDraw.Draw(image)
    x, y, size = digest[9] % 44, digest[10] % 44, 8 + digest[11] % 16
    draw.ellipse((x, y, x + size, y + size), fill=tuple(accent))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


@lru_cache(maxsize=4096)
def generate_tokens(prompt: str, max_tokens: int, seed: int) -> tuple[str, ...]:
    """LLM-style tokens (words with a leading space after the first), deterministic from the input."""
    rng = random.Random(f"{prompt}\0{max_tokens}\0{seed}")
    tokens = []
    for position in range(max_tokens):
        word = rng.choice(_VOCABULARY)
        if position == 0:
            tokens.append(word.capitalize())
        elif position == max_tokens - 1 or rng.random() < 0.08:
            tokens.append(f" {word}.")
        else:
            tokens.append(f" {word}")
    return tuple(tokens)


def caption_for(prompt: str) -> tuple[str, float]:
    """A caption and a confidence score in [0.80, 0.99], deterministic from the prompt."""
    digest = hashlib.sha256(prompt.encode()).digest()
    score = round(0.80 + (digest[0] % 20) / 100, 2)
    subject = prompt.strip().rstrip(".") or "an empty scene"
    return f"a picture of {subject}", score


def content_type_for(filename: str) -> str:
    """The content type an output file is served with, from its extension."""
    for suffix, content_type in CONTENT_TYPES.items():
        if filename.endswith(suffix):
            return content_type
    return "application/octet-stream"
