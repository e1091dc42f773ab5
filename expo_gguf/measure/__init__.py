"""Measuring models: KL divergence and teacher-forced decoding shared by both commands
(``divergence``), perplexity and KLD over a text, the ``eval`` command (``perplexity``), and
``compare``, a folder of its own: the run, its checks, prompts, figures and report.

May import: ``runtime``, ``gguf_file``, ``chat.messages`` (prompts are chat messages),
``progress``, ``errors``, ``_fs``, ``_units``, ``_data``.
"""
