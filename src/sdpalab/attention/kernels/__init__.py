"""Hand-written kernels. ``qdecode/``: fused decode attention that reads a quantized KV cache in
its stored format (backend ``triton_qdecode``, registered in :mod:`sdpalab.attention.backends`).
CUDA only; with ``TRITON_INTERPRET=1`` it also runs (slowly) on the CPU, which is how CI tests it.
"""
