"""The demo: a customer-support task the project builds itself, so the pipeline runs where nothing can be downloaded.

``house`` holds the house style's rules, ``scenarios`` the kinds of customer e-mail and ``words`` what they are
filled in with; ``data`` writes the scenarios' prompts and replies, ``rubric`` is the gold house-style rubric the
simulated labelers rank by, ``base_model`` builds the tiny Llama model. The pipeline meets the demo only through
configuration: ``configs/*.yaml`` name its files under ``runs/_data/demo/`` and ``runs/_models/tiny-llama/``, and
``configs/pipeline.yaml`` names its rubric and builds its files first (``prepare``). See the README's "The demo".
"""
