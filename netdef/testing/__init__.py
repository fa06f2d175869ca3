"""Helpers for testing layers: building one layer alone, running it, and checking its gradients."""

from .gradient_check import GradientCheckError, check_gpu_matches_cpu, check_gradient
from .runners import (
    check_empty_batch,
    check_layer_error,
    enable_param_gradients,
    forward_layer,
    make_blobs,
    make_layer,
    make_net,
    rand,
    run_backward,
    run_layer,
)

__all__ = [
    "GradientCheckError",
    "check_empty_batch",
    "check_gpu_matches_cpu",
    "check_gradient",
    "check_layer_error",
    "enable_param_gradients",
    "forward_layer",
    "make_blobs",
    "make_layer",
    "make_net",
    "rand",
    "run_backward",
    "run_layer",
]
