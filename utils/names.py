"""Lists of names given as one comma-separated string (``--unknown_dataset``, ``--detector``)."""
from __future__ import annotations


def split_names(value) -> list[str]:
    """The names of a comma-separated string (or a list of them), in order, without repeats."""
    values = value if isinstance(value, (list, tuple)) else [value]
    return list(dict.fromkeys(n.strip() for v in values for n in str(v).split(",") if n.strip()))
