"""How a host wrapper launches its kernels.

The first kernel of a wrapper is launched as usual (`k<<<grid, block>>>`).
Each later one is launched with programmatic dependent launch (Hopper's
PDL: `cudaLaunchKernelEx` with programmatic stream serialization) and
starts with `griddepcontrol.wait`, which returns once the kernel before it
has completed and its writes are visible. The kernels still run one after
the other, as in the C; what overlaps is the launch of the next one with
the last blocks of the one before (measured on the H100, gqa_decode's bf16
ending at batch 8: 76.5 against 80.6 us a call, its three kernels
unchanged).
"""
from __future__ import annotations

from . import ir

WAIT = ir.Opaque('asm volatile("griddepcontrol.wait;" ::: "memory");')
"""A later kernel's first statement: nothing before it reads or writes memory."""


def launch(name: str, grid: str, block: str, dynamic: int, args: str, follows: bool) -> tuple[ir.Stmt, ...]:
    """The statements that launch kernel `name` (`grid` and `block` are
    `dim3(...)` texts, `dynamic` the bytes of dynamic shared memory);
    `follows`: another kernel of the wrapper runs before it."""
    if dynamic:
        opt_in: tuple[ir.Stmt, ...] = (ir.Opaque(f"cudaFuncSetAttribute({name}, "
                                                 f"cudaFuncAttributeMaxDynamicSharedMemorySize, {dynamic});"),)
    else:
        opt_in = ()
    if not follows:
        shape = f"{grid}, {block}" + (f", {dynamic}" if dynamic else "")
        return opt_in + (ir.Opaque(f"{name}<<<{shape}>>>({args});"),)
    return opt_in + (
        ir.Opaque("cudaLaunchAttribute otp_pdl[1];"),
        ir.Opaque("otp_pdl[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;"),
        ir.Opaque("otp_pdl[0].val.programmaticStreamSerializationAllowed = 1;"),
        ir.Opaque(f"cudaLaunchConfig_t otp_launch = {{{grid}, {block}, {dynamic}, 0, otp_pdl, 1}};"),
        ir.Opaque(f"cudaLaunchKernelEx(&otp_launch, {name}, {args});"))
