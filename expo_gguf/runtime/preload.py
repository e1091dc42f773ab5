"""llama.cpp's shared libraries loaded before numpy, by their one owner.

With a CUDA build of llama-cpp-python and a numpy wheel loaded first, model loading segfaulted in
llama.cpp's print_info (seen on an H200 machine with numpy 2.5.2); loading llama.cpp first avoids
it. The package calls ``preload_llama`` on import for library users; the CLI calls it before it
imports a command that may run llama.cpp, so ``logs`` and ``--version`` start without it.
"""

from __future__ import annotations


def preload_llama() -> None:
    try:
        import llama_cpp  # noqa: F401
    except ImportError:  # only `chat`, `quantize` and K-quants need it; they say so when used
        pass
