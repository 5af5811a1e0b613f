"""Loading: the user's model (PyTorch, ONNX) and sample data, checked before anything is built."""
