"""The errors otp reports to a user: each carries a location when it has one,
and the CLI turns every one of them into a message and an exit status instead
of a traceback."""
from __future__ import annotations

from typing import Optional

from .ir import Loc


class OtpError(Exception):
    """Base of every error meant for the user. Exit status 2 (bad input)."""

    exit_code = 2

    def __init__(self, message: str, loc: Optional[Loc] = None) -> None:
        super().__init__(message)
        self.message = message
        self.loc = loc

    def __str__(self) -> str:
        return f"{self.loc}: error: {self.message}" if self.loc else f"error: {self.message}"


class ParseError(OtpError):
    """C source that does not parse."""


class SpecError(OtpError):
    """A contract (spec file or in-source clause) that does not parse or does not fit."""


class TargetError(OtpError):
    """A target that matches nothing, or more than the transformation accepts."""


class TransformError(OtpError):
    """A transformation refused: its structural precondition does not hold."""


class ScriptError(OtpError):
    """A transformation script that cannot be loaded or that raised."""


class UsageError(ScriptError):
    """A command-line option that the script, once run, turns out to make
    meaningless: the command writes nothing (its output would mislead)."""


class ToolError(OtpError):
    """An external tool (gcc) is missing or failed in a way that is not the user's code."""


class CheckFailed(OtpError):
    """A check (level 1, --exec) found a step wrong. Exit status 1."""

    exit_code = 1
