"""The one exception type that reaches a user as a single sentence."""
from __future__ import annotations


class UserError(ValueError):
    """A value that cannot be used: the message says, in plain words, what is wrong.

    Library code raises it with ``setting``, the name of the parameter at fault (for
    example ``"class_num"``), and leaves command-line flags out of the message. The
    scripts' entry point (``utils.cli.run_main``) prints it as one line, adds the flag to
    change, as "(change --class_num)", when the message does not already name it, and exits with
    status 2, so no traceback reaches the user.
    """

    def __init__(self, message: str, setting: str | None = None):
        super().__init__(message)
        self.setting = setting

    def for_command_line(self) -> str:
        """The message as a script prints it: with the flag to change, once."""
        message = str(self)
        if self.setting and f"--{self.setting}" not in message:
            message = f"{message.rstrip('.')} (change --{self.setting})"
        return message
