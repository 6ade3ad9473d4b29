from setuptools import setup

setup(
    name="ganflow",
    version="0.1.0",
    description="Train GANs on TensorFlow/Keras 3 from plugins, tracked in MLflow",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=["ganflow", "ganflow_plugins"],
    package_dir={"ganflow": "ganflow", "ganflow_plugins": "plugins"},
    install_requires=[
        "tensorflow>=2.21,<2.22",
        "keras>=3.15,<3.16",
        "mlflow>=3.17,<3.18",
        "tensorflow-datasets>=4.9.10,<4.10",
        "importlib_resources>=6",  # tfds needs it on Python 3.11 but does not declare it
        "pluggy>=1.5,<2",
        "click>=8.1,<9",
        "scikit-learn>=1.5,<2",
        "scipy>=1.11,<2",
        "matplotlib>=3.8,<4",
        "pillow>=10,<14",
        "numpy>=1.26,<3",
        "pyyaml>=6,<7",
    ],
    # setuptools: a test builds the plugin package of docs/plugins.md into a wheel, offline.
    extras_require={"test": ["pytest>=8,<10", "pytest-xdist>=3.5,<4", "setuptools>=61"]},
    entry_points={"console_scripts": ["ganflow=ganflow.cli:entry"]},
)
