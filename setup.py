"""Builds the optional compiled patch-entropy kernel; all other metadata lives in pyproject.toml.

``optional=True``: without a C compiler the install still succeeds and preprocessing uses the
ONNX Runtime fallback (``nsnet info`` then reports ``kernel: reference``).
"""
import sys

from setuptools import Extension, setup

# -ffp-contract=off: no fused multiply-adds, so the portable, AVX2 and AVX-512 (8- and 16-lane)
# variants round identically. -fno-math-errno lets sqrt vectorise (errno is never read).
FLAGS = [] if sys.platform == "win32" else ["-O3", "-std=gnu11", "-ffp-contract=off", "-fno-math-errno", "-Wno-psabi"]

setup(ext_modules=[Extension("nsnet_sdk.pipeline._entropy", ["nsnet_sdk/pipeline/_entropy.c"],
                             depends=["nsnet_sdk/pipeline/_entropy_lanes.h"],  # in the sdist too
                             extra_compile_args=FLAGS, optional=True)])
