"""The demo: a customer-support task the project builds itself, so the pipeline runs where nothing can be downloaded.

``house`` holds the house style's rules, ``scenarios`` the kinds of customer e-mail, ``words`` what the e-mails
are filled in with and ``styles`` the reply writers; ``data`` builds the data set from them and caches it,
``rubric`` is the gold house-style rubric the simulated labelers rank by, ``base_model`` builds the tiny Llama model.
The pipeline meets the demo only through configuration: ``configs/*.yaml`` name its files under
``runs/_data/demo/`` and ``runs/_models/tiny-llama/``, and ``configs/pipeline.yaml`` names its rubric and builds its
files first (``prepare``). See the README's "The demo".
"""
