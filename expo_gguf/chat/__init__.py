"""The chat: its own plain types (``messages``: ``Message``, ``Sampling``), the REPL (``repl``,
its slash commands in ``commands``) and ``--vs`` (``vs``), conversation files (``conversation``),
a session binding a loaded model to the REPL (``session``), and the HTTP server (``serve``).

``messages``, ``repl``, ``commands``, ``vs`` and ``conversation`` import neither llama.cpp nor
click: the REPL talks to a model through ``repl.Backend``'s callables and is tested with a fake.
``session`` and ``serve`` may import ``runtime``; all may import ``gguf_file``, ``errors``,
``_fs``, ``_units``.
"""
