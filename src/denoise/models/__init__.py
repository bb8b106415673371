"""Networks, one self-contained file each, and the registry that builds them by name."""
