"""Helpers for testing layers: building one layer alone and checking its gradients."""
from .gradient_check import GradientCheckError, check_gpu_matches_cpu, check_gradient, make_layer, run_layer

__all__ = ["GradientCheckError", "check_gpu_matches_cpu", "check_gradient", "make_layer", "run_layer"]
