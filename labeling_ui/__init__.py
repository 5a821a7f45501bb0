"""The labeling stage: people (or simulated labelers) rank K responses per prompt; the rankings become preferences.

One idea per module, lowest layer first: ``rules`` (what a valid ranking is), ``config``, ``db`` (schema, engine,
migrations), ``assignment`` (who gets which item), ``storage`` (``LabelStore``), ``stats``, ``export``, ``service``
(what a user can do), ``page`` and ``server`` (the Gradio app; the page is its ``layout``, the ``labeler``'s and
the ``admin``'s events, and the API ``routes``), ``simulate``, ``cli``. Other packages use ``api``.
Usage: see the README.
"""
