"""Installable helpers shared by the SIREN stage scripts (`pip install -e .`).

Dependencies are pinned in requirements.txt (GPU) and requirements-cpu.txt (CPU/CI); this file
does not repeat them so that `pip install -e . --no-deps` never pulls a different torch.
"""

from setuptools import find_packages, setup

setup(
    name="siren",
    version="0.1.0",
    description="SIREN: long-term interest sketching and internalized reasoning for LLM rating prediction",
    packages=find_packages(include=["siren", "siren.*"]),
    python_requires=">=3.10",
)
