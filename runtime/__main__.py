"""``python -m runtime PLAN``: see runtime.cli."""

import os
import sys

from runtime.cli import main

code = main()
# Leave without the interpreter's teardown: with gloo, a C++ worker thread still joinable when
# static destructors run aborts the process ("terminate called without an active exception",
# SIGABRT) after the report was already written; nothing is left to clean up at this point.
sys.stdout.flush()
sys.stderr.flush()
os._exit(code)
