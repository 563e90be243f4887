"""lowbit.codegen."""
