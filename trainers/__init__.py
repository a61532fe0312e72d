"""What runs inside a Ray Train worker, one module per model family (see registry.py)."""

import logging

# On CPUs with AVX512-BF16, bitsandbytes tries to fetch an optional 4-bit GEMM kernel from the
# Hugging Face Hub when it is imported, and logs a warning when it cannot (no `kernels` package,
# or no Hub); it then uses its built-in kernel, which is what the CPU paths here are tested with.
logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
