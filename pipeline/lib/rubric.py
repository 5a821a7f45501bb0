"""Gold rubrics: ``module:function(prompt, response) -> float`` named in a config, loaded by any stage that scores."""

from __future__ import annotations

import importlib
from collections.abc import Callable


def load_rubric(spec: str | None) -> Callable[[str, str], float] | None:
    """The function ``spec`` names (``package.module:function``), or None when no rubric is set."""
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(
            f"rubric {spec!r}: write it as module:function, e.g. my_rubrics:score (module on PYTHONPATH)."
        )
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as error:
        raise ValueError(f"rubric {spec!r}: cannot load it ({error}). Check the module is on PYTHONPATH.") from error
