"""Measuring models: KL divergence and teacher-forced decoding shared by both commands
(``divergence``), perplexity and KLD over a text, the ``eval`` command (``perplexity``), and
``compare``: the run (``compare``), what is checked before it (``compare_checks``), the prompts
(``compare_prompts``), the figures and verdicts (``compare_metrics``) and the report
(``compare_report``).

May import: ``runtime``, ``gguf_file``, ``chat.messages`` (prompts are chat messages),
``progress``, ``errors``, ``_fs``, ``_units``, ``_data``.
"""
