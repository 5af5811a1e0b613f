"""Serving models over HTTP: the :class:`~.runtime.Runtime` (a memory-bounded model cache and a dynamic
batcher per model), the ASGI app (``/v1`` and the Open Inference Protocol ``/v2``), request bodies, the
HTTP server with its limits, and Prometheus metrics."""
