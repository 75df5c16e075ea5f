"""The entry point of the ``podnet`` command (and ``python -m podnet``).

Ctrl-C is handled before anything heavy is imported: loading the CLI (rich, pydantic, the
planner) takes a few hundred milliseconds, and a Ctrl-C in that time must end the command
with exit 130, not a traceback. Nothing has been done yet then, so the process just exits;
once the command runs, ``cli.main`` takes the signal over.
"""

import os
import signal


def _interrupted_while_starting(signum: int, frame: object) -> None:
    os._exit(130)


def main() -> None:
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # an ignored Ctrl-C (nohup, `&`) stays ignored
        signal.signal(signal.SIGINT, _interrupted_while_starting)
    from podnet.cli import main as run

    run()


if __name__ == "__main__":
    main()
