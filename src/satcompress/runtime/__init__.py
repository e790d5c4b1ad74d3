"""Running deployable models: ONNX export and the ONNX Runtime sessions.

The sessions are saturation-safe on CPUs whose int8 kernels could overflow; every figure is
measured in them. Below ``compress`` and ``artifact``: both export and run ONNX graphs here.
"""
