"""lowbit.compiler.onnx_import."""
