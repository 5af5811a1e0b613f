"""Trusting and loading a bundle: its manifest and tensors, the model behind a backend (onnxruntime,
TFLite), the crash-proof probe, the golden parity check, signatures, and ``edgec verify``'s checks."""
