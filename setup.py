from setuptools import find_packages, setup

setup(
    name="mutualnet_det",
    version="0.1.0",
    description="MutualNet and US-Net slimmable Mask R-CNN on Detectron2",
    packages=find_packages(include=["mutualnet_det", "mutualnet_det.*"]),
    python_requires=">=3.8",
    # Detectron2 is not on PyPI: tools/install_detectron2.py installs it (see docs/installation.md).
    install_requires=["torch>=2.1", "torchvision", "fvcore", "pycocotools", "faster-coco-eval",
                      "matplotlib", "tqdm", "tabulate", "filelock"],
    # deploy: ONNX export (tools/export_width.py) and the ONNX Runtime predictor (runtime/exported.py);
    # the tests check both, so "test" installs them too.
    extras_require={"deploy": ["onnx", "onnxruntime"], "test": ["pytest", "onnx", "onnxruntime"]},
)
