"""Running a transformation script inside a session, turning whatever goes
wrong in it into an OtpError that points at the script's line."""
from __future__ import annotations

import runpy
import traceback
from pathlib import Path
from typing import Optional

from .errors import OtpError, ScriptError, UsageError
from .ir import Loc
from .session import Session, StopScript


def new_session(script: str | Path, target: str = "cpu", stop_after: Optional[int] = None,
                sizes: Optional[dict[str, float]] = None, precision: str = "fp32") -> Session:
    path = Path(script)
    if not path.is_file():
        raise ScriptError(f"no such script: {script}")
    if path.suffix != ".py":
        raise ScriptError(f"{script}: a transformation script is a Python file (.py)")
    if stop_after is not None and stop_after < 1:
        raise ScriptError(f"--step counts from 1, got {stop_after}")
    return Session(path.resolve().parent, target, stop_after, sizes, precision)


def run_script(session: Session, script: str | Path) -> Optional[OtpError]:
    """Execute the script; return the error that stopped it (None if it ran
    to the end or to `--step N`). Steps recorded before an error stay in
    the session so their code can still be written out."""
    path = Path(script).resolve()
    with session:
        try:
            runpy.run_path(str(path), run_name="__otp_script__")
        except StopScript:
            pass
        except OtpError as e:
            if e.loc is None:
                e.loc = _script_line(e, path, str(script))
            return e
        except SyntaxError as e:
            return ScriptError(f"invalid Python: {e.msg}", Loc(str(script), e.lineno or 1, e.offset or 1))
        except Exception as e:  # the user's script raised: show where, not a traceback
            return _script_exception(e, path, str(script))
    if session.program is None:
        return ScriptError(f"{script} never called load(): nothing to transform")
    if session.precision != "fp32" and not session.precision_read:
        return UsageError(f"{script} did not read precision() for --target {session.target}, so --precision "
                           f"{session.precision} would change nothing: leave it out")
    return None


def _script_line(e: BaseException, path: Path, shown: str) -> Optional[Loc]:
    """The line of the script that was running when `e` was raised."""
    frames = [f for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == path]
    return Loc(shown, frames[-1].lineno or 1, 1) if frames else None


def _script_exception(e: Exception, path: Path, shown: str) -> ScriptError:
    err = ScriptError(f"the script raised {type(e).__name__}: {e}", _script_line(e, path, shown))
    err.__cause__ = e
    return err
