"""The optional compiled step loop (edge_runtime/_stepkernel.c); everything else is in pyproject.toml.

The extension is optional: where it does not build (no compiler, an unsupported platform) the package installs
without it and the runtime runs the step graph through LiteRT (``Synthesizer.engine`` says which runs).
"""

import sys

from setuptools import Extension, setup

flags = [] if sys.platform == "win32" else ["-O3", "-std=c11", "-Wall", "-Wno-unused-function"]
setup(ext_modules=[Extension("edge_runtime._stepkernel", ["edge_runtime/_stepkernel.c"],
                             depends=["edge_runtime/_stepkernel_kernels.h"], extra_compile_args=flags, optional=True)])
