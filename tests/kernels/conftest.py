"""Kernel tests run on CPU in Triton's interpreter: TRITON_INTERPRET must be set before any module
that decorates a Triton kernel is imported, so it is set here, before ``kernels`` is imported."""

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
