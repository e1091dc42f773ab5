"""Running a GGUF with llama.cpp (through llama-cpp-python): the run options every command shares
and their resolution (``options``: -ngl, threads, context), the one owner of llama.cpp's
process-wide log callback (``log``), tokenizing and chat-template rendering over a vocabulary
(``tokens``), a loaded model that streams replies and keeps its KV cache (``model``), and loading
it (``loader``).

May import: ``gguf_file``, ``_data``, ``errors``. Never the chat layer: sampling settings are read
by attribute (``model.SamplingSettings``).
"""
