"""Writing a file so that readers never see it half written, and reading JSON leniently.

Nothing here knows about runs: utils.run_folder adds a written path to its run's record
(``atomic_path``) before calling :func:`atomic_replace`.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager

from utils.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# Read once: os.umask can only be read by setting it, which would race with other threads' writes.
_UMASK = _umask()


@contextmanager
def atomic_replace(path: str):
    """Yield a temporary name to write; it replaces ``path`` only once writing succeeded.

    The temporary file is unique (``.NAME.XXXX.tmp`` beside ``path``), so two writers of
    one path never share it, and a crash or a failed write leaves ``path`` as it was
    (the previous file, or none). A write that fails is a UserError naming the file.
    """
    folder = os.path.dirname(os.path.abspath(path))
    try:
        handle, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    except OSError as error:
        raise UserError(f"cannot write {path} ({error.strerror or error}); pick a writable `output_dir`",
                        setting="output_dir")
    os.close(handle)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp's 0600 would make results private
        os.replace(tmp, path)
    except OSError as error:
        raise UserError(f"cannot write {path} ({error.strerror or error}); the previous file, if any, is "
                        "unchanged; free some space or pick a writable `output_dir`", setting="output_dir")
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def read_json(path: str):
    """A JSON file's content, or None when it is missing or unreadable."""
    try:
        with open(path) as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return None
