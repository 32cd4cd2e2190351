"""The embedded default workload of ``modelpress demo``."""
