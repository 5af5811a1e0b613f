"""Host-side SDK: load, compress, quantize, convert, verify and bundle models.

Heavy frameworks (torch, onnx, litert-torch) are imported inside the functions that use them.
"""
