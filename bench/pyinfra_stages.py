"""``pyinfra`` as its command line runs it, with the time each stage starts written down.

    GPUFLEET_BENCH_STAGES=/tmp/stages python bench/pyinfra_stages.py -y inventory/lab.py ...

bench/converge.py --full-stack runs the full stack through this to show where a converged
re-run spends its time: the wall-clock time (``time.time()``) of this file's first line, of
pyinfra's command line imported, of each stage pyinfra enters (connect, prepare: the deploy
files run and ask their facts; execute; disconnect) and of the exit, one ``name time`` per line.
"""

import os
import sys
import time

_STARTED = time.time()
_MARKS = [("started", _STARTED)]

import atexit  # noqa: E402

from pyinfra.api.state import State  # noqa: E402
from pyinfra_cli.main import main  # noqa: E402

_MARKS.append(("imported", time.time()))
_set_stage = State.set_stage


def _marked(self, stage):
    _MARKS.append((stage.name.lower(), time.time()))
    return _set_stage(self, stage)


def _write():
    _MARKS.append(("exit", time.time()))
    with open(os.environ["GPUFLEET_BENCH_STAGES"], "w") as marks:
        marks.writelines(f"{name} {stamp:.6f}\n" for name, stamp in _MARKS)


State.set_stage = _marked
atexit.register(_write)
sys.argv[0] = "pyinfra"
sys.exit(main())
