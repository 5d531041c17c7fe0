"""The GPU tests' settings, made before any of them starts CUDA."""

import os


def pytest_configure(config) -> None:
    """cuBLAS's workspace fixed (CUBLAS_WORKSPACE_CONFIG, read when cuBLAS starts): deterministic matrix products,
    and what torch.use_deterministic_algorithms requires on CUDA (test_resume.py)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
