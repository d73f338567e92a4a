"""A run's output folder: claimed and locked before any work, with a record of what the run writes.

Each run records, at the top level of its output folder, the files and folders it wrote
(:class:`OutputFolder`, ``.vmdls-run.json``): the ``overwrite`` setting removes what that
record names and nothing else (:func:`claim_output_dir`). Files are written through
:func:`atomic_path`, which adds them to the record before writing them atomically.
"""
from __future__ import annotations

import fnmatch
import glob
import hashlib
import json
import os
import re
import stat
import sys
import tempfile
import threading
from argparse import Namespace
from contextlib import contextmanager
from dataclasses import dataclass

from utils.errors import UserError
from utils.files import atomic_replace, read_json

# The record of what a run wrote, at the top of its output folder.
RECORD_NAME = ".vmdls-run.json"
RECORD_FORMAT = 1
_RECORD_LIMIT = 16 << 20  # bytes: far above any run's record


@dataclass(frozen=True)
class RunLayout:
    """What one kind of run writes into its output folder (paths relative to it).

    ``kind`` is the name its record (RECORD_NAME) gives it, ``what`` the one sentences give
    it. ``files``: the fixed names it writes, and ``patterns`` glob patterns of the top-level
    names it may write (``epoch=*-step=*.ckpt``): a folder that holds one that no earlier run
    of this kind recorded is refused, even with ``overwrite``. ``trees``: folders it owns whole
    (``checkpoints``), created by the claim. ``first``: file-name patterns of the recorded
    files ``overwrite`` removes before any other (those whose presence marks a finished run).
    ``legacy``: top-level patterns by which a folder written before runs recorded their files
    shows that it holds such a run (it is refused, ``overwrite`` or not: nothing says which of
    its files are the run's).
    """

    kind: str
    what: str
    files: tuple[str, ...] = ()
    patterns: tuple[str, ...] = ()
    trees: tuple[str, ...] = ()
    first: tuple[str, ...] = ()
    legacy: tuple[str, ...] = ()


TRAINING_RUN = RunLayout(
    kind="training", what="a training run",
    files=("args.json", "metrics.csv", "hparams.yaml", "tsne_latent.png"),
    trees=("checkpoints",),
    first=("*.ckpt",),
    legacy=("args.json", "checkpoints/*.ckpt"),
)

AUTOENCODER_RUN = RunLayout(
    kind="autoencoder", what="an autoencoder run",
    files=("last.ckpt",),
    patterns=("epoch=*-step=*.ckpt",),
    first=("*.ckpt",),
    legacy=("last.ckpt", "epoch=*-step=*.ckpt", "lightning_logs/version_*"),
)

# test.py adds each unknown set's files (in its sub-folder with several sets).
EVALUATION = RunLayout(
    kind="evaluation", what="an evaluation",
    files=("summary.csv", "summary.md", "roc.png", "metrics.csv", "hparams.yaml"),
    first=("results.json",),
    legacy=("results.json", "summary.csv", "summary.md", "scores.csv", "thresholds.csv"),
)

LAYOUTS = (EVALUATION, TRAINING_RUN, AUTOENCODER_RUN)


FOLDER_NAME_LIMIT = 80


def folder_name(name: str) -> str:
    """A file or folder name for ``name`` (a data set's name or path) that no other name
    gets: the name itself when it is short lower-case ASCII letters, digits and ``._-`` (not
    leading or trailing ``.`` or ``_``); else its readable part (those characters, the rest
    replaced by ``_``, the last FOLDER_NAME_LIMIT of them) with ``~`` and 8 hex digits of its
    SHA-256, so that names that read alike (``P/a/b`` and ``P/a_b``, names that differ in
    other letters only, very long paths) never share a folder."""
    readable = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._")
    if readable == name and name == name.lower() and 0 < len(name) <= FOLDER_NAME_LIMIT:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{readable[-FOLDER_NAME_LIMIT:].strip('._') or 'set'}~{digest}"


def is_worker_process() -> bool:
    """A process of a multi-process run other than the first: Lightning starts the other DDP
    processes by running the script again (LOCAL_RANK set), launchers set RANK / NODE_RANK.
    Only the first one claims the output folder."""
    for name in ("LOCAL_RANK", "RANK", "NODE_RANK", "SLURM_PROCID"):
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) != 0:
            return True
    return False


def check_writable(folder: str) -> None:
    """Create ``folder`` and write (then remove) a probe file in it; a UserError otherwise."""
    if os.path.lexists(folder) and not os.path.isdir(folder):
        raise UserError(f"{folder} is a file, not a folder, so the run cannot write into it; remove it or pick "
                        "another `output_dir`", setting="output_dir")
    try:
        os.makedirs(folder, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".probe.", suffix=".tmp")
        try:
            os.write(handle, b"probe")
        finally:
            os.close(handle)
            os.remove(probe)
    except OSError as error:
        raise UserError(f"cannot write into {folder} ({error.strerror or error}), so the run could not save its "
                        "results; pick a writable `output_dir` or fix the folder's permissions", setting="output_dir")


# The output folders this process has claimed (the newest last): atomic_path and the loggers
# add what they write to the record of the one that holds it (record_output).
_CLAIMED: list["OutputFolder"] = []


class OutputFolder:
    """A run's output folder, claimed for writing: an exclusive lock on ``OUTPUT_DIR/.lock``
    held until :meth:`release` (or the end of a ``with`` block), so a second run into the
    same folder is refused while this one writes; and, once started (claim_output_dir), the
    run's record ``OUTPUT_DIR/.vmdls-run.json``, rewritten atomically each time the run adds
    a path to it, before that path is written."""

    LOCK_NAME = ".lock"

    def __init__(self, path: str, resumed_here: bool = False):
        self.path = path
        self.resumed_here = resumed_here
        self._handle: int | None = None
        self._record: dict | None = None
        self._pid = os.getpid()
        self._guard = threading.Lock()

    def lock(self) -> "OutputFolder":
        """Take the lock. ``.lock`` is opened without following a link and must be a regular
        file with one name; it is emptied and given this process's id only once locked."""
        try:
            import fcntl
        except ImportError:  # no flock (Windows): nothing to hold
            return self
        lock_path = os.path.join(self.path, self.LOCK_NAME)
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | \
            getattr(os, "O_CLOEXEC", 0)
        try:
            handle = os.open(lock_path, flags, 0o666)
        except OSError as error:
            if os.path.islink(lock_path):
                raise UserError(f"{lock_path} is a symbolic link, and a run never writes its lock through a link; "
                                "remove the link, or pick another `output_dir`", setting="output_dir")
            if os.path.lexists(lock_path) and not os.path.isfile(lock_path):
                raise UserError(f"{lock_path} is not a regular file, so it cannot be the run's lock; remove it, or "
                                "pick another `output_dir`", setting="output_dir")
            raise UserError(f"cannot write into {self.path} ({error.strerror or error}); pick a writable "
                            "`output_dir`", setting="output_dir")
        try:
            info = os.fstat(handle)
            if not stat.S_ISREG(info.st_mode):
                raise UserError(f"{lock_path} is not a regular file, so it cannot be the run's lock; remove it, or "
                                "pick another `output_dir`", setting="output_dir")
            if info.st_nlink > 1:
                raise UserError(f"{lock_path} is one of {info.st_nlink} names of a file (a hard link), so writing the "
                                "lock would change the others too; remove it, or pick another `output_dir`",
                                setting="output_dir")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                raise UserError(f"another run is writing into {self.path}; wait for it to finish, or pick another "
                                "`output_dir`", setting="output_dir")
            os.ftruncate(handle, 0)  # ours now: locked, a regular file with no other name
            os.write(handle, f"{os.getpid()}\n".encode())
        except BaseException:
            os.close(handle)
            raise
        self._handle = handle
        return self

    def start_record(self, record: dict) -> None:
        """Write ``record`` (RECORD_NAME) and add this run's writes to it from now on."""
        self._record = record
        self._pid = os.getpid()
        self._write_record()
        _CLAIMED.append(self)

    def relative(self, path: str) -> str | None:
        """``path`` relative to the folder, with ``/`` separators; None outside it."""
        for folder, target in ((os.path.abspath(self.path), os.path.abspath(path)),
                               (os.path.realpath(self.path), os.path.join(os.path.realpath(os.path.dirname(
                                   os.path.abspath(path))), os.path.basename(path)))):
            try:
                if target != folder and os.path.commonpath([target, folder]) == folder:
                    rel = os.path.relpath(target, folder).replace(os.sep, "/")
                    return rel if _valid_entry(rel) else None
            except ValueError:  # another drive
                continue
        return None

    def own(self, path: str, section: str = "files") -> bool:
        """Add ``path`` (inside the folder) to the record's ``section`` (files, trees or
        folders) before it is written; False when the path is not in this folder."""
        if self._record is None or os.getpid() != self._pid:  # not started, or a forked child
            return False
        rel = self.relative(path)
        if rel is None:
            return False
        with self._guard:
            entries = self._record[section]
            if rel in entries or any(rel.startswith(tree + "/") for tree in self._record["trees"]):
                return True
            entries.append(rel)
            self._write_record()
        return True

    def _write_record(self) -> None:
        with atomic_replace(os.path.join(self.path, RECORD_NAME)) as tmp, open(tmp, "w") as stream:
            json.dump(self._record, stream, indent=1)
            stream.write("\n")

    def release(self) -> None:
        if self in _CLAIMED:
            _CLAIMED.remove(self)
        if self._handle is not None:
            os.close(self._handle)  # closing the file drops the flock
            self._handle = None

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def record_output(path: str, section: str = "files") -> None:
    """Add ``path`` to the record of the output folder this process claimed that holds it
    (the innermost), before it is written: :func:`atomic_path` calls this for every
    file, the loggers for their files and folders. Nothing outside a claimed folder."""
    if not _CLAIMED:
        return
    holders = [(len(rel), folder) for folder in _CLAIMED if (rel := folder.relative(path)) is not None]
    if holders:
        min(holders, key=lambda item: item[0])[1].own(path, section)


def _valid_entry(rel) -> bool:
    """A path a record may name: relative, ``/``-separated, no ``.`` or ``..`` part, and
    not the record or the lock themselves."""
    if not isinstance(rel, str) or not rel or "\0" in rel or rel.startswith("/") or os.path.isabs(rel):
        return False
    parts = rel.split("/")
    return all(part not in ("", ".", "..") for part in parts) and rel not in (RECORD_NAME, OutputFolder.LOCK_NAME)


def _new_record(layout: RunLayout) -> dict:
    return {"format": RECORD_FORMAT, "kind": layout.kind, "what": layout.what,
            "about": "the files and folders this run wrote under its --output_dir (paths relative to it); "
                     "--overwrite removes these and nothing else",
            "files": [], "trees": [], "folders": []}


def read_record(folder: str) -> dict | None:
    """The run record at the top of ``folder`` (None when there is none); one that is a
    link, not a regular file or not a valid record is a UserError."""
    path = os.path.join(folder, RECORD_NAME)
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as error:
        info, problem = None, f"cannot be read ({error.strerror or error})"
    if info is None:
        pass
    elif stat.S_ISLNK(info.st_mode):
        problem = "is a symbolic link, not a run record"
    elif not stat.S_ISREG(info.st_mode):
        problem = "is not a regular file, so not a run record"
    else:
        problem = "is not a run record this version can read"
        try:
            handle = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
            with os.fdopen(handle, "rb") as stream:
                record = json.loads(stream.read(_RECORD_LIMIT).decode("utf-8"))
        except (OSError, ValueError):
            record = None
        if isinstance(record, dict) and isinstance(record.get("kind"), str) and record.get("format") == RECORD_FORMAT \
                and all(isinstance(record.get(k), list) and all(_valid_entry(e) for e in record[k])
                        for k in ("files", "trees", "folders")):
            record.setdefault("what", f"a {record['kind']} run")
            return record
    raise UserError(f"{path} {problem}, so which files in {folder} are a run's cannot be told; remove it and the "
                    "run's files by hand, or pick another `output_dir`", setting="output_dir")


def _what(record: dict) -> str:
    layout = next((layout for layout in LAYOUTS if layout.kind == record["kind"]), None)
    if layout is not None:
        return layout.what
    return record["what"] if isinstance(record.get("what"), str) else f"a {record['kind']} run"


def _reachable(folder: str, rel: str) -> str | None:
    """``folder/rel`` when every folder between is a real folder (not a link) that holds no
    other run's record; None otherwise (a path never followed out, nor into another run)."""
    current = folder
    for part in rel.split("/")[:-1]:
        current = os.path.join(current, part)
        try:
            if not stat.S_ISDIR(os.lstat(current).st_mode):
                return None
        except OSError:
            return None
        if os.path.lexists(os.path.join(current, RECORD_NAME)):
            return None
    return os.path.join(folder, *rel.split("/"))


def _has_content(path: str) -> bool:
    """A path that holds something: a file or link, or a folder with anything in it
    (another run's folder, with its record, counts as nothing of this one's)."""
    try:
        info = os.lstat(path)
    except OSError:
        return False
    if not stat.S_ISDIR(info.st_mode):
        return True
    if os.path.lexists(os.path.join(path, RECORD_NAME)):
        return False
    try:
        with os.scandir(path) as entries:
            return any(True for _ in entries)
    except OSError:
        return True


def _present(folder: str, record: dict) -> list[str]:
    """The record's files and folders that exist (with something in them), the files that
    mark a finished run first."""
    found = []
    for rel in record["files"]:
        path = _reachable(folder, rel)
        if path is not None and os.path.lexists(path) and not os.path.isdir(path):
            found.append(rel)
    for rel in record["trees"]:
        path = _reachable(folder, rel)
        if path is not None and _has_content(path):
            found.append(rel)
    return found


def _first(rels: list[str], layout: RunLayout) -> list[str]:
    """``rels`` with the ones that mark a finished run (``layout.first``) first."""
    return sorted(rels, key=lambda rel: not any(fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], p) for p in layout.first))


def _example(folder: str, present: list[str], record: dict) -> str:
    """One path of ``present`` (a record's, _present) to name in a sentence: a file that
    marks a finished run (in one of its trees too, such as checkpoints/last.ckpt) if any."""
    layout = next((layout for layout in LAYOUTS if layout.kind == record["kind"]), None)
    patterns = layout.first if layout is not None else ()
    marks = [rel for rel in present if rel in record["files"]
             and any(fnmatch.fnmatchcase(rel.rsplit("/", 1)[-1], p) for p in patterns)]
    for rel in [] if marks else [rel for rel in present if rel in record["trees"]]:
        path = _reachable(folder, rel)
        try:
            names = sorted(entry.name for entry in os.scandir(path) if entry.is_file(follow_symlinks=False))
        except (OSError, TypeError):
            continue
        marks += [f"{rel}/{name}" for name in sorted(names, key=lambda name: name != "last.ckpt")
                  if any(fnmatch.fnmatchcase(name, p) for p in patterns)]
    return (marks or present)[0]


def _legacy(folder: str) -> tuple[RunLayout, str] | None:
    """A run of a version that wrote no record, by its top-level files: its layout and one of them."""
    for layout in LAYOUTS:
        for pattern in layout.legacy:
            hits = sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))
            if hits:
                return layout, os.path.relpath(hits[0], folder).replace(os.sep, "/")
    return None


def _conflicts(folder: str, layout: RunLayout, files, trees, folders, record: dict | None) -> list[str]:
    """The paths this run would write that hold something no run recorded as this kind's,
    and the links or files where it would write a folder."""
    mine = set(record["files"]) if record else set()
    mine_trees = set(record["trees"]) if record else set()
    found = []
    for rel in dict.fromkeys((*layout.files, *files)):
        if rel not in mine and os.path.lexists(os.path.join(folder, *rel.split("/"))):
            found.append(rel)
    for pattern in layout.patterns:
        for hit in sorted(glob.glob(os.path.join(glob.escape(folder), pattern))):
            rel = os.path.relpath(hit, folder).replace(os.sep, "/")
            if rel not in mine:
                found.append(rel)
    for rel in dict.fromkeys((*layout.trees, *trees, *folders)):
        path = os.path.join(folder, *rel.split("/"))
        if os.path.islink(path) or os.path.lexists(path) and not os.path.isdir(path):
            found.append(rel)  # a link or a file where the run writes a folder
        elif rel in (*layout.trees, *trees) and rel not in mine_trees and _has_content(path):
            found.append(rel)
    return found


def _nested_run(folder: str, folders) -> str | None:
    """A folder this run would write into that holds another run's record."""
    for rel in folders:
        path = os.path.join(folder, *rel.split("/"))
        if os.path.lexists(os.path.join(path, RECORD_NAME)):
            return path
    return None


def _remove_tree(path: str) -> bool:
    """Remove a folder the run owns, never following a link and keeping any folder inside
    that holds another run's record; True when it is gone."""
    if os.path.lexists(os.path.join(path, RECORD_NAME)):
        return False
    kept = False
    with os.scandir(path) as entries:
        for entry in list(entries):
            if entry.is_dir(follow_symlinks=False):
                kept = not _remove_tree(entry.path) or kept
            else:
                os.remove(entry.path)
    if not kept:
        os.rmdir(path)
    return not kept


def _temporaries(path: str) -> list[str]:
    """The temporary files atomic_path left beside ``path`` (``.NAME.XXXX.tmp``)."""
    folder, name = os.path.split(path)
    try:
        with os.scandir(folder) as entries:
            return [entry.path for entry in entries if entry.name.startswith(f".{name}.")
                    and entry.name.endswith(".tmp") and not entry.is_dir(follow_symlinks=False)]
    except OSError:
        return []


def _remove_recorded(folder: str, layout: RunLayout, record: dict) -> None:
    """Remove what ``record`` names: its files (those that mark a finished run first) and
    their temporary files, its trees, then its folders if empty; never through a link,
    never inside a folder that now holds another run's record."""
    for rel in _first(record["files"], layout):
        path = _reachable(folder, rel)
        if path is None:
            continue
        if os.path.lexists(path) and not os.path.isdir(path):
            os.remove(path)
        for leftover in _temporaries(path):
            os.remove(leftover)
    for rel in record["trees"]:
        path = _reachable(folder, rel)
        if path is None or not os.path.lexists(path):
            continue
        if os.path.isdir(path) and not os.path.islink(path):
            _remove_tree(path)
        elif os.path.islink(path):
            os.remove(path)
    for rel in sorted(record["folders"], key=lambda rel: -rel.count("/")):
        path = _reachable(folder, rel)
        if path is not None and os.path.isdir(path) and not os.path.islink(path):
            try:
                os.rmdir(path)
            except OSError:  # not empty: something not this run's is in it
                pass
    for leftover in _temporaries(os.path.join(folder, RECORD_NAME)):
        os.remove(leftover)


def _adopted(folder: str, layout: RunLayout, files) -> dict:
    """A record for a run resumed into a folder written before runs recorded their files:
    the files and folders of its kind that are there."""
    record = _new_record(layout)
    record["files"] = [rel for rel in dict.fromkeys((*layout.files, *files))
                       if os.path.lexists(os.path.join(folder, *rel.split("/")))]
    for pattern in layout.patterns:
        record["files"] += [os.path.relpath(hit, folder).replace(os.sep, "/")
                            for hit in sorted(glob.glob(os.path.join(glob.escape(folder), pattern)))]
    return record


def is_inside(path: str, folder: str) -> bool:
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return os.path.commonpath([path, folder]) == folder


def claim_output_dir(path: str, layout: RunLayout, overwrite: bool = False, resume_from: str | None = None, *,
                     files=(), trees=(), folders=()) -> OutputFolder:
    """Make ``path`` this run's output folder before any work starts.

    It is created and checked by writing a probe file, then locked (:class:`OutputFolder`).
    Its record (RECORD_NAME) says which run, if any, it holds and which files are that
    run's. Refused, each in one sentence: a folder holding a run of another kind (even with
    ``overwrite``); one holding a run of this kind, unless ``overwrite`` (then exactly the
    files and folders its record names are removed, those marking a finished run first) or
    the run resumes from a checkpoint inside it (``resume_from``); a folder written before
    runs recorded their files that holds a run (``layout.legacy`` of any layout: its files
    are to be removed by hand, as nothing tells them from others'); a path this run writes
    (``layout.files``/``patterns``/``trees`` and the run's own ``files``, ``trees`` and
    sub-``folders``) that holds something no run of this kind recorded, or a sub-folder
    holding another run. Then ``layout.trees`` and ``folders`` are created (and checked) and
    a new record is started, naming the trees and the folders this run created; the files
    are added as they are written (record_output). Processes other than the first of a
    multi-process run only create the folders.
    """
    check_writable(path)
    resumed_here = bool(resume_from) and is_inside(resume_from, path)
    claimed = OutputFolder(path, resumed_here=resumed_here)
    if is_worker_process():
        for sub in layout.trees:
            check_writable(os.path.join(path, sub))
        return claimed
    claimed.lock()
    try:
        record = read_record(path)
        if record is not None and record["kind"] != layout.kind:
            present = _present(path, record)
            if present:
                raise UserError(f"{path} holds {_what(record)} ({_example(path, present, record)}), not "
                                f"{layout.what}, and `overwrite` never removes another kind of run's files; pick "
                                "another `output_dir`", setting="output_dir")
            record = None  # a record of nothing left: the folder is free
        last = os.path.join(path, "checkpoints", "last.ckpt")
        resume = (f"`checkpoint_path` {last} to resume it" if layout is TRAINING_RUN and os.path.isfile(last)
                  else "")
        if resumed_here:
            if overwrite:
                raise UserError(f"`overwrite` would delete the run being resumed from {resume_from}; drop "
                                f"`overwrite` to resume into {path}, or pick another `output_dir`", setting="overwrite")
        else:
            legacy = _legacy(path) if record is None else None
            if legacy is not None:
                kind, example = legacy
                again = f"resume it with `checkpoint_path` {last}, " if kind is layout and resume else ""
                raise UserError(f"{path} seems to hold {kind.what} ({example}) written by a version that did not "
                                "record a run's files, so a new run may not write there, even with `overwrite`; "
                                f"{again}move or remove its files by hand, or pick another `output_dir`",
                                setting="output_dir")
            nested = _nested_run(path, folders)
            if nested is not None:
                raise UserError(f"{nested} holds another run (its {RECORD_NAME}), and this run would write into it; "
                                "pick another `output_dir`", setting="output_dir")
            conflicts = _conflicts(path, layout, files, trees, folders, record)
            if conflicts:
                there = os.path.join(path, *conflicts[0].split("/"))
                if os.path.islink(there):
                    raise UserError(f"{there} is a symbolic link where this run writes, and a run never writes "
                                    "through a link; remove the link, or pick another `output_dir`",
                                    setting="output_dir")
                if conflicts[0] in (*layout.trees, *trees, *folders) and not os.path.isdir(there):
                    raise UserError(f"{there} is a file where this run writes a folder; move or remove it, or pick "
                                    "another `output_dir`", setting="output_dir")
                raise UserError(f"{there} already exists and no run recorded it as its own, so this run may not "
                                "replace it, not even with `overwrite`; move or remove it by hand, or pick another "
                                "`output_dir`", setting="output_dir")
            present = _present(path, record) if record is not None else []
            if present and not overwrite:
                raise UserError(f"{path} already holds {layout.what} ({_example(path, present, record)}); pass "
                                f"`overwrite` to replace its files{', ' + resume if resume else ''}, or pick "
                                "another `output_dir`", setting="output_dir")
            if record is not None:
                try:
                    _remove_recorded(path, layout, record)
                except OSError as error:
                    raise UserError(f"`overwrite` could not remove the previous run's files in {path} "
                                    f"({error.strerror or error}); remove them by hand or pick another `output_dir`",
                                    setting="output_dir")
        if resumed_here:
            new = record if record is not None else _adopted(path, layout, files)
        else:
            new = _new_record(layout)
        created = [rel for rel in folders if not os.path.lexists(os.path.join(path, *rel.split("/")))]
        for sub in (*layout.trees, *folders):
            check_writable(os.path.join(path, *sub.split("/")))
        for section, rels in (("trees", (*layout.trees, *trees)), ("folders", created)):
            new[section] = list(dict.fromkeys((*new[section], *rels)))
        claimed.start_record(new)
    except BaseException:
        claimed.release()
        raise
    return claimed


@contextmanager
def atomic_path(path: str):
    """:func:`utils.files.atomic_replace` of ``path`` (a temporary name to write, which
    replaces ``path`` only once writing succeeded) for a file of a run: in a claimed output
    folder, ``path`` first joins the run's record (:func:`record_output`), so ``overwrite``
    knows it as the run's."""
    record_output(str(path))
    with atomic_replace(path) as tmp:
        yield tmp


def write_json(path: str, payload: dict) -> None:
    with atomic_path(path) as tmp, open(tmp, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")


def write_run_record(output_dir: str, args: Namespace, argv: list[str] | None, resumed: bool) -> str:
    """``args.json``: the command line and the values the run used. A run resumed into its
    own folder keeps the earlier runs' records under ``previous_runs``. Only the first
    process of a multi-process run writes it."""
    path = os.path.join(output_dir, "args.json")
    if is_worker_process():
        return path
    record = {"argv": sys.argv if argv is None else list(argv), **vars(args)}
    previous = read_json(path) if resumed else None
    if isinstance(previous, dict):
        history = previous.pop("previous_runs", [])
        record["previous_runs"] = [*(history if isinstance(history, list) else []), previous]
    write_json(path, record)
    return path
