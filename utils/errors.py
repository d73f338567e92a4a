"""The one exception type that reaches a user as a single sentence."""
from __future__ import annotations

import re

# How torch's DataLoader re-raises an error of one of its worker processes
# (torch.utils.data._utils.ExceptionWrapper.reraise): it builds the same exception type
# from one string, "Caught UserError in DataLoader worker process 0.\nOriginal Traceback
# (most recent call last):\n ... \nutils.errors.UserError: <the sentence>\n".
_WORKER_WRAPPED = re.compile(r"\ACaught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")

# A setting named in a message, in backquotes (`output_dir`): the scripts show it as its flag.
_NAMED_SETTING = re.compile(r"`([a-z][a-z0-9_]*)`")


class UserError(ValueError):
    """A value that cannot be used: the message says, in plain words, what is wrong.

    Library code raises it with ``setting``, the name of the parameter at fault (for
    example ``"class_num"``), and leaves command-line flags out of the message: a setting
    the sentence names is written in backquotes (``"pick another `output_dir`"``). The
    scripts' entry point (``utils.cli.run_main``) prints it as one line
    (:meth:`for_command_line`: each backquoted setting becomes its flag, ``--output_dir``,
    and the flag to change is added, as "(change --class_num)", when the message does not
    already name it), and exits with status 2, so no traceback reaches the user.

    A UserError raised in a DataLoader worker reaches the main process as the same
    sentence: the worker's traceback that the DataLoader wraps around it is dropped here
    (see :func:`worker_sentence`).
    """

    def __init__(self, message: str, setting: str | None = None):
        if isinstance(message, str):
            message = worker_sentence(message, type(self))
        super().__init__(message)
        self.setting = setting

    def for_command_line(self) -> str:
        """The message as a script prints it: settings as their flags, with the flag to change, once."""
        message = _NAMED_SETTING.sub(r"--\1", str(self))
        if self.setting and f"--{self.setting}" not in message:
            message = f"{message.rstrip('.')} (change --{self.setting})"
        return message


def worker_sentence(message: str, error_type: type = UserError) -> str:
    """``message`` itself, unless it is a DataLoader worker's wrapped traceback of an
    ``error_type``: then the sentence the worker raised, found after the traceback's last
    "module.Type: " line. The setting it named does not cross processes (the datasets'
    per-item errors name none: their sentences name the file and what to do with it)."""
    if not _WORKER_WRAPPED.match(message):
        return message
    marker = f"\n{error_type.__module__}.{error_type.__qualname__}: "
    at = message.rfind(marker)
    if at < 0:
        return message
    sentence = message[at + len(marker):].strip()
    return sentence or message
