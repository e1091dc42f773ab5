"""The two compiled kernels (convert/_fused.c, quant/_q8_0.c); everything else is in pyproject.toml.

Both are optional: where no C compiler is found the install goes on without them, and the build
takes its numpy path, which writes the same bytes more slowly. Compiled without fast-math and
without floating-point contraction: a fused multiply-add would change result bits on CPUs that
have one (every ARM64, most x86), and the files must be the same everywhere.
"""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HEADER = "expo_gguf/_kernels.h"  # what both share: no contraction, the AVX2 clones


class BuildExt(build_ext):
    def build_extensions(self) -> None:
        msvc = self.compiler.compiler_type == "msvc"
        for ext in self.extensions:
            ext.extra_compile_args = ["/O2", "/fp:precise"] if msvc else ["-O3", "-ffp-contract=off", "-std=c11"]
        super().build_extensions()


setup(
    ext_modules=[
        Extension("expo_gguf.convert._fused", ["expo_gguf/convert/_fused.c"], depends=[HEADER], optional=True),
        Extension("expo_gguf.quant._q8_0", ["expo_gguf/quant/_q8_0.c"], depends=[HEADER], optional=True),
    ],
    cmdclass={"build_ext": BuildExt},
)
