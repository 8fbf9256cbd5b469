"""Feature networks of the reference evaluation code, with their original state-dict key names."""
