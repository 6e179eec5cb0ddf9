"""Model names: what Triton itself rejects, and the stricter rule for names accelserve creates.

Triton (``ValidateModelName`` in triton-inference-server/core) rejects an empty name, a name of only whitespace,
and any name containing ``..`` or ``/``; every subdirectory of a repository is loaded as a model, hidden ones
included. A name accelserve creates must also be safe as a directory name on any OS and as a path segment of
Triton's HTTP API (``/v2/models/<name>``), so it is limited to letters, digits, ``_``, ``-`` and ``.``
(not leading, no ``..``).
"""

from __future__ import annotations

import re
import unicodedata

from accelserve.errors import InvalidInputError

_SAFE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]*")
#: bytes in one path component on common filesystems
MAX_NAME_BYTES = 255


def triton_name_problems(name: str) -> list[str]:
    """Why Triton would refuse (or mis-handle) a model directory with this name; empty when it accepts it."""
    problems = []
    if not name:
        problems.append("the model name is empty")
    elif not name.strip():
        problems.append("the model name is only whitespace")
    if ".." in name or "/" in name:
        problems.append("the model name contains a path traversal sequence ('..' or '/')")
    return problems


def check_model_name(name: str) -> str:
    """Return ``name`` if accelserve may create a model with it; otherwise raise InvalidInputError saying why."""
    hint = "use letters, digits, '_', '-' and '.', starting with a letter or digit (for example: resnet50_fp16)"
    reasons = triton_name_problems(name)
    if not reasons:
        bad = sorted({c for c in name if c in "/\\" or c.isspace() or unicodedata.category(c).startswith("C")})
        if bad:
            shown = ", ".join(repr(c) for c in bad)
            reasons.append(f"it contains characters that are not allowed in a model directory name: {shown}")
        elif name.startswith("."):
            reasons.append("it starts with '.', which makes a hidden directory (Triton still loads it as a model)")
        elif not _SAFE.fullmatch(name):
            reasons.append("it contains characters outside letters, digits, '_', '-' and '.'")
        elif len(name.encode()) > MAX_NAME_BYTES:
            reasons.append(f"it is longer than {MAX_NAME_BYTES} bytes")
    if reasons:
        raise InvalidInputError(f"invalid model name {name!r}: {'; '.join(reasons)}", hint=hint)
    return name
