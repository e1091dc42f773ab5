"""Quantization: our one table of quant types and the per-tensor policy (``types``), ggml's row
quantizers reached through ctypes for the streaming pass (``ggml``), llama.cpp's own quantizer
in process for K-quants (``llama``), and GGUF-to-GGUF conversion, the ``quantize`` command
(``requantize``).

May import: ``gguf_file``, ``runtime.log`` (llama.cpp's log has one owner), ``errors``, ``_fs``.
"""
