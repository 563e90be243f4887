"""lowbit.codegen: lowering the integer graph to compiled TVM kernels.

The only package that imports TVM's compiler, and only lazily: ``codegen.target`` names
targets (:func:`~lowbit.codegen.target.resolve_target`), ``codegen.kernels`` is the
kernel-family registry (``kernels/bitserial.py``: XNOR / AND-popcount bit-serial MatMul).
Importing ``lowbit.codegen`` itself imports nothing heavy.
"""
