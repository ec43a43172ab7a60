"""decap: zero-shot image captioning by decoding CLIP latents (DeCap), as batch pipelines.

Install torch first, pinned with torchvision (see README), so pip keeps the CPU build:
    pip install torch==2.13.0 torchvision==0.28.0 && pip install -e .[test]    (or .[dask] for the DaskRunner)
Beam ships this package to workers with ``--setup_file ./setup.py``.
"""
from setuptools import find_packages, setup

DASK = "dask[distributed]==2026.8.0"  # for --runner=DaskRunner (Beam's runner on a dask.distributed cluster)
AIRFLOW = "apache-airflow==3.3.2"  # the scheduled DAGs in jobs/dags/
SELENIUM = "selenium==4.51.0"  # drives Debian's chromium in the report's test (4.52.0 needs a newer certifi)

setup(
    name="decap",
    version="0.1.0",
    description="Zero-shot captioning by decoding CLIP latents (DeCap), as Apache Beam pipelines",
    python_requires=">=3.10",
    packages=find_packages(include=["decap_core", "decap_core.*", "pipelines", "pipelines.*", "jobs", "jobs.*"]),
    package_data={"decap_core": ["model_configs/*.json"]},
    install_requires=[
        "torch==2.13.0",
        "torchvision==0.28.0",
        "open_clip_torch==3.3.0",
        "apache-beam==2.77.0",
        "faiss-cpu==1.15.1",
        "webdataset==1.0.2",
        "pyarrow==25.0.1",
        "numpy==2.4.6",
        "protobuf==6.33.6",
        "fsspec==2026.9.0",
        "pillow==12.3.0",
        "tqdm==4.70.1",
        "safetensors==0.8.0",
        "zstandard==0.25.0",
        "matplotlib==3.11.2",
        "pycocoevalcap==1.2",  # BLEU, METEOR, ROUGE-L, CIDEr-D as papers report them (its tokenizer, METEOR: Java)
        "regex==2026.11.19",  # Unicode categories in text normalisation (open_clip needs it too)
        "scikit-learn==1.9.1",  # PCA and t-SNE of the report's modality-gap figure
    ],
    extras_require={"dask": [DASK], "airflow": [AIRFLOW],
                    "test": ["pytest==9.2.0", "ruff==0.14.0", SELENIUM, DASK, AIRFLOW]},
    entry_points={"console_scripts": ["decap=jobs.cli:main"]},
)
