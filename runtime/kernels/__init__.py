"""lowbit.runtime.kernels."""
