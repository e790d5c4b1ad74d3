"""Running deployable models: ONNX export of a PyTorch model, and the ONNX Runtime sessions
(saturation-safe on CPUs whose int8 kernels could overflow) that every figure is measured in.

Below ``compress`` and ``artifact``: both export and run ONNX graphs through it.
"""
