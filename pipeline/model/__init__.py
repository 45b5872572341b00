"""The eager model: built from the spec's factory and weights, and run in-process."""
