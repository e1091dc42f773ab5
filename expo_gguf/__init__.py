"""expo-gguf: ExPO extrapolation straight to GGUF, and an offline chat on top of it."""

# Load llama.cpp's shared libraries before anything imports numpy. With a CUDA build of
# llama-cpp-python and a numpy wheel loaded first, model loading segfaulted in llama.cpp's
# print_info (seen on an H200 machine with numpy 2.5.2); loading llama.cpp first avoids it.
try:
    import llama_cpp  # noqa: F401
except ImportError:  # only `chat`, `quantize` and K-quants need it; they say so when used
    pass
