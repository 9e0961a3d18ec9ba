"""megatron-sgpo: sorted Group Policy Optimization on megatron-core, with SGLang rollouts."""
from setuptools import find_packages, setup

# torch is deliberately given as a range that the CPU build 2.13.0 satisfies: install torch first
# (`pip install torch==2.13.0` on CPU machines) and pip will not replace it with a CUDA build.
setup(
    name="megatron-sgpo",
    version="0.1.0",
    description="sGPO/GRPO RL post-training on megatron-core with SGLang rollouts",
    packages=find_packages(include=["megatron_sgpo", "megatron_sgpo.*"]),
    package_data={"megatron_sgpo": ["assets/**/*"]},
    include_package_data=True,
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        "megatron-core>=0.16,<0.20",
        "numpy",
        "safetensors",
        "transformers>=4.45",
        "tensorboard",
        "pyyaml",
        "tqdm",
        "requests",
        "psutil",  # megatron-core's dist-checkpoint writer needs it and does not declare it
    ],
    extras_require={
        "gpu": ["transformer-engine[pytorch]", "sglang"],
        "vllm": ["vllm"],
        "tasks": ["math-verify==0.9.0", "reasoning-gym==0.1.25"],
        "test": ["pytest", "pytest-timeout", "hypothesis", "math-verify==0.9.0", "reasoning-gym==0.1.25"],
    },
    entry_points={"console_scripts": ["sgpo=megatron_sgpo.cli:main"]},
)
