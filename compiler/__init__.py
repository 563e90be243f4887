"""lowbit.compiler."""
