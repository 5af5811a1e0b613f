"""Host-side SDK, one folder per stage of the data path: load, compress, quantize, verify, bundle, report.

``pipeline.convert`` runs the stages in order; ``fleet`` watches the boards; ``examples``
holds the small real models the quick start, tests and benchmarks use. Heavy frameworks
(torch, onnx, litert-torch) are imported inside the functions that use them.
"""
