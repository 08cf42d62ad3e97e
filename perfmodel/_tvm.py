"""Import TVM's MetaSchedule quickly.

``tvm.s_tir.tensor_intrin`` (imported by the first ``TuneContext`` and by every build) parses
hundreds of TVMScript functions, and each parse calls ``inspect.stack()``, which reads the source
of every frame on the stack: about 20 s of a 2-core machine's time per process. The parser only
needs the frames themselves, so during that one import ``inspect.stack`` returns frames without
source context. Behaviour is otherwise unchanged.
"""

from __future__ import annotations

import inspect
import sys
from typing import Any

_done = False


def _fast_stack(context: int = 1) -> list[inspect.FrameInfo]:  # noqa: ARG001
    frames = []
    f: Any = sys._getframe(1)
    while f is not None:
        frames.append(inspect.FrameInfo(f, f.f_code.co_filename, f.f_lineno, f.f_code.co_name, None, None))
        f = f.f_back
    return frames


def load_ms():  # noqa: ANN201
    """``tvm.s_tir.meta_schedule``, with its tensor intrinsics registered (fast, once per process)."""
    global _done
    if not _done:
        original = inspect.stack
        inspect.stack = _fast_stack
        try:
            import tvm.s_tir.tensor_intrin  # noqa: F401
        finally:
            inspect.stack = original
        _done = True
    from tvm.s_tir import meta_schedule

    return meta_schedule
