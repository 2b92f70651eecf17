"""Canonical JSON: one spelling per value (sorted keys, no spaces, UTF-8 text as it is), so equal inputs
give equal strings. The loader stores inputs in it, reconciliation matches predictions by it, and the
emulator and chaos suite count creates per input with it."""

from __future__ import annotations

import json
from typing import Any

_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def canonical_json(value: Any) -> str:
    """The canonical JSON of `value`. Raises ValueError for NaN or infinity (not JSON), TypeError for
    what JSON cannot hold."""
    return _ENCODER.encode(value)
