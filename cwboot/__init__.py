"""cwboot: network-boot server for HPC clusters (see README.md and ../DESIGN)."""

__version__ = "0.1.0"
