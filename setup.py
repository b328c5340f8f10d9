from setuptools import find_packages, setup

TOOLS = ["opencv-python-headless<4.12", "panopticapi-lite", "matplotlib"]
VITDET = ["timm>=0.9"]
DEPLOY = ["onnx==1.23.2", "onnxruntime==1.32.0", "ml-dtypes==0.5.4", "onnxscript==0.7.2",
          "openvino==2026.4.1"]

setup(
    name="dysample-d2",
    version="0.1.0",
    description="DySample (ICCV 2023) dynamic upsampling in Detectron2's FPN",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    license_files=["LICENSE"],
    python_requires=">=3.9",
    packages=find_packages(include=["dysample_d2", "dysample_d2.*"]),
    package_data={
        # the CPU sampling kernel's source, built on first use (dysample_d2/layers/native.py)
        "dysample_d2.layers": ["csrc/*.cpp", "csrc/*.h"],
        # the configs, found by dysample_d2.model_zoo (YACS _BASE_ chains and lazy imports)
        "dysample_d2.model_zoo": ["configs/*.yaml", "configs/*/*.yaml", "configs/*/*.py"],
    },
    # detectron2 and torch are not listed: neither installs by name from PyPI the way users
    # need it (see scripts/install.sh); a user with Detectron2 runs `pip install -e .`.
    # shapely: the LSJ recipes' FixedSizeCrop crops polygon masks with it
    install_requires=["ninja", "fvcore>=0.1.5", "pycocotools>=2.0.2", "tabulate", "shapely"],
    extras_require={
        # scripts/: synthetic datasets, sampling pictures, benchmark charts
        "tools": TOOLS,
        "vitdet": VITDET,  # Detectron2's ViT (ViTDet) uses timm's layers
        # exporters and runtimes of docs/deployment.md that install beside torch and numpy<2
        # (ExecuTorch and LiteRT's converters need numpy >= 2: see that page)
        "deploy": DEPLOY,
        "test": ["pytest>=7"] + TOOLS + VITDET + DEPLOY,
    },
)
