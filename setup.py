"""Build of masque-relay's compiled extension ``_fastpath._core``.

One Cython module (``_fastpath/_core.pyx`` including several ``.pxi`` files) linked
with the C sources under ``_fastpath/csrc``. Our C is built with -Wall -Wextra
-Werror; the same flags apply to the Cython-generated translation unit.
"""

from __future__ import annotations

import glob

from Cython.Build import cythonize
from setuptools import Extension, setup

WARNING_FLAGS = ["-Wall", "-Wextra", "-Werror"]

extension = Extension(
    "_fastpath._core",
    sources=["_fastpath/_core.pyx", *sorted(glob.glob("_fastpath/csrc/*.c"))],
    include_dirs=["_fastpath/csrc", "bpf/include"],
    extra_compile_args=["-O2", "-std=gnu11", *WARNING_FLAGS],
    libraries=["crypto"],  # OpenSSL libcrypto (EVP) for the QUIC datagram lane
    depends=[*glob.glob("_fastpath/*.pxi"), *glob.glob("_fastpath/csrc/*.h")],
)

setup(
    ext_modules=cythonize(
        [extension],
        compiler_directives={"language_level": "3"},
        include_path=["."],
    ),
)
