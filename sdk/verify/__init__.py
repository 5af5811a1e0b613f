"""Verification: artifacts run through the runtime's own code on held-out samples, timed on this host."""
