"""Bundles: written atomically (nothing half-written on failure), with the versions that made them."""
