"""`hpc-mnist status`: every run at a glance from a login node (hpc_mnist/runtime/runinfo.py reads them)."""
