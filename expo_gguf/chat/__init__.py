"""The chat: its own plain types (``messages``: ``Message``, ``Sampling``), the REPL (``repl``,
its slash commands in ``commands``) and ``--vs`` (``vs``), conversation files (``conversation``),
every conversation kept (``store``, ``keeping``, read back by ``logs``), a session binding a
loaded model to the REPL (``session``), the HTTP server (``server``) and its page (``page/``).

``messages``, ``repl``, ``commands``, ``vs``, ``conversation``, ``store``, ``keeping``, ``logs``,
``server.openai`` and ``server.keep`` import neither llama.cpp nor click: the REPL talks to a model
through ``repl.Backend``'s callables and is tested with a fake. ``session`` and ``server`` may
import ``runtime``; all may import ``gguf_file``, ``errors``, ``_fs``, ``_units``.
"""
