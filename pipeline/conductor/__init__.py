"""The conductor: the pipeline config and its stage list (``config``), running the stages in order and skipping
what is up to date (``orchestrate``), and the run report (``report``)."""
