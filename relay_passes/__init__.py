"""Relax IR passes that lower a tvmptq quantization plan to integer-only TVM programs."""
