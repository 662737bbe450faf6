#!/usr/bin/env python
"""ssb_det: SSB-ResNet (SSBNet, Kwan & Song, ECCV 2022) backbones for Detectron2.

Detectron2 is not on PyPI and is therefore not listed in install_requires: install it first
(see README.md; `bash install.sh` does everything, including an offline fallback).
"""
from setuptools import find_packages, setup

setup(
    name="ssb_det",
    version="0.1.0",
    description="SSB-ResNet (saliency-sampled bottlenecks) backbones for Detectron2",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(exclude=("tests", "tests.*", "tools", "configs")),
    python_requires=">=3.9",
    install_requires=[
        "torch>=1.10",
        "torchvision",
        "fvcore>=0.1.5",
        "pycocotools>=2.0.2",
        "numpy",
        "Pillow",
        "matplotlib",
        "opencv-python-headless",
    ],
    extras_require={
        "test": ["pytest>=7"],
        "export": ["onnx", "onnxruntime", "onnxscript"],
    },
    package_data={"ssb_det": ["compat/*.py"]},
)
