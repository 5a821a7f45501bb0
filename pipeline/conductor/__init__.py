"""The conductor: the stage list (``stages``), the pipeline config (``config``), running the stages in order and
skipping what is up to date (``orchestrate``), and the run report (``report``)."""
