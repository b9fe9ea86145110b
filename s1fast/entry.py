"""How a torchrun entry point (``s1fast.train``, ``s1fast.rl``) ends: its exit status and its one error line.

- the run returned: 0, or 128 + the signal that stopped it (it saved first: a stopped run did not finish);
- an error the user fixes (bad flags or data, a checkpoint that cannot be read or written, a full disk or a
  folder without permission): one ``error:`` line from rank 0, exit 2;
- SIGINT / SIGTERM outside the steps (set-up, the export): the ``INTERRUPTED`` line, exit 128 + the signal;
- rank 0 failed and said so (``RankFollows``): its status, silently; anything else, a bug: the traceback.

The process group is shut down together only after a run that ended normally on every rank.
"""
from __future__ import annotations

import errno
import os
import signal
import sys
from typing import Callable

from . import distributed
from .stopping import INTERRUPTED
from .train_export import RankFollows

# failures a user fixes (full disk, permissions): one error line, not a traceback
USER_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EROFS, errno.EPERM)


def exit_status(start: Callable[[], dict], user_errors: tuple[type[BaseException], ...]) -> int:
    """Run ``start()`` (it starts the process group and runs; its result has ``signal`` where a signal stopped
    it) and map how it ended to an exit status (the module's docstring). ``user_errors``: the exceptions whose
    message is the error line."""
    ended = False
    try:
        result = start()
        ended = True
        return 128 + result["signal"] if "signal" in result else 0
    except user_errors as e:
        _say(f"error: {e}")
        return 2
    except OSError as e:
        if e.errno not in USER_ERRNOS:
            raise
        _say(f"error: {e.strerror} ({e.filename or 'a file'}): free the space or fix the permissions, then run "
             f"again with the same --output-dir to resume from its last checkpoint")
        return 2
    except KeyboardInterrupt as e:
        _say(f"error: {INTERRUPTED}")
        return 128 + getattr(e, "signum", signal.SIGINT)
    except RankFollows as e:
        return e.code
    finally:
        distributed.shutdown(together=ended)


def _say(line: str) -> None:
    """``line`` on stderr, from rank 0 only (every rank meets the same error)."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(line, file=sys.stderr)
