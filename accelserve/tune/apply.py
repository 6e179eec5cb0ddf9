"""``tune --apply``: write the winning config into the user's repository, as ``repo add`` writes configs.

Only ``<repo>/<model>/config.pbtxt`` is replaced: the new text goes to a temporary file in the same directory,
is fsynced, and renamed over the old one (a reader sees the old or the new file, never half of one); the model
files and version directories are untouched. The config must keep the model's name, inputs and outputs, and the
file must still be the one tune started from (otherwise someone edited it meanwhile: nothing is written).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from accelserve.errors import RepositoryError
from accelserve.triton.config import CONFIG_FILENAME, parse_config_text, read_config, signature_differences


def apply_config(repository: str | Path, model: str, config_text: str, *, expected_old: str | None = None) -> Path:
    """Replace the model's config.pbtxt by ``config_text`` atomically; returns its path."""
    path = Path(repository) / model / CONFIG_FILENAME
    if not path.is_file():
        raise RepositoryError(f"{path} does not exist: nothing to apply the tuned config to")
    old_text = path.read_text(encoding="utf-8")
    if expected_old is not None and parse_config_text(old_text, path) != parse_config_text(expected_old, path):
        raise RepositoryError(
            f"{path} changed while tune ran: not overwriting it",
            hint="rerun tune on the current config, or apply the winner from the tune report by hand",
        )
    new = parse_config_text(config_text, path)
    old = read_config(path)
    if new.name and old.name and new.name != old.name:
        raise RepositoryError(f"the tuned config names model '{new.name}', not '{old.name}'")
    differences = signature_differences(old, new)
    if differences:
        raise RepositoryError(f"the tuned config changes the model's inputs/outputs: {'; '.join(differences)}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{CONFIG_FILENAME}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(config_text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, path.stat().st_mode & 0o777)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        raise RepositoryError(f"cannot write {path}: {exc}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path
