"""The shared library: the run layout (``runs``), the stage skeleton (``stage``), launching (``launch``), tracking,
tables and prompt files, gold rubrics, rankings-to-pairs and model helpers. It holds no stage and imports none."""
