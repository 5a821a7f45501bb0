"""The pipeline package: ``lib`` (the library every stage shares), the stages ``sft`` and ``candidates``, ``demo``
(the demo as data and a rubric, met only through configuration) and ``conductor`` (``python -m pipeline run``).
The README's "How the code is laid out" maps every stage to its entry point."""
