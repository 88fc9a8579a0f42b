r"""`accelerate launch` for the stage scripts, whose failure ends with the stage's one-line error.

    python -m siren.launch --multi_gpu --num_processes 2 extract_last_hidden_ddp.py --model ckpt/GRPO_Movies_step100 ...

Takes exactly `accelerate launch`'s arguments and runs it. Why: when a process of a multi-process
run stops with a stage's one-line error (`error: ...`, exit status 2), torch's launcher under
`accelerate launch` then prints its own ChildFailedError traceback, so the one line the user needs
scrolls out of sight. Here that traceback is left out and the failed process's line is printed
last; the exit status is the process's own (2 for a refused input, as with `python script.py`).
The line comes from the error file the launcher gives each process (TORCHELASTIC_ERROR_FILE), which
`siren.cli.run_main` fills. A process that died of an unexpected exception or a signal is named
with its exit status; its traceback is above. A single process (no --multi_gpu) already ends with
its own line, and accelerate's CalledProcessError traceback after it is left out too.
"""

from __future__ import annotations

import subprocess
import sys


def failure_line(rank: int, message, exitcode: int) -> str:
    """The last line to print for a launched process that failed (`message` from its error file)."""
    if isinstance(message, dict):  # torch's own ErrorHandler format: {"message": ..., "extraInfo": ...}
        message = message.get("message", "")
    message = str(message or "")
    if message.startswith("error: "):
        return message
    how = f"signal {-exitcode}" if exitcode < 0 else f"exit status {exitcode}"
    return f"error: process {rank} of the launched run failed ({how}); its output above says why"


def exit_status(exitcode: int) -> int:
    """A shell's exit status for a child's: 128 + signal for a killed one, never 0 for a failure."""
    return 128 - exitcode if exitcode < 0 else exitcode or 1


def main(argv: list[str] | None = None) -> int:
    from accelerate.commands.launch import launch_command, launch_command_parser
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    args = launch_command_parser().parse_args(argv)
    try:
        launch_command(args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        print(failure_line(rank, failure.message, failure.exitcode), file=sys.stderr)
        return exit_status(failure.exitcode)
    except subprocess.CalledProcessError as err:  # one process: its own line was the last it printed
        return exit_status(err.returncode)
    return 0


if __name__ == "__main__":
    sys.exit(main())
