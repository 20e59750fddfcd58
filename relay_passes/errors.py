"""Errors the lowering raises on purpose (subclasses of tvmptq's own, so the CLI maps them).

Passes run inside TVM's C++ pass manager; registering the classes with tvm_ffi makes an error
raised in a Python pass come back out of ``Sequential`` as the same class, not RuntimeError.
"""
import tvm_ffi

from tvmptq.errors import ModelError


@tvm_ffi.register_error
class LoweringError(ModelError):
    """A plan that cannot be turned into an integer Relax program."""


@tvm_ffi.register_error
class LayerMatchError(LoweringError):
    """The plan's layers and the imported Relax graph do not line up."""


@tvm_ffi.register_error
class IntegerOnlyError(LoweringError):
    """Float ops remain in a module that should be integer-only; the message lists them."""
