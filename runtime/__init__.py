"""lowbit.runtime."""
