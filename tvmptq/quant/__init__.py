"""Baseline post-training quantization: specs, observers, the plan, and the PyTorch simulation."""
