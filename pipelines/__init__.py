"""Apache Beam pipelines over decap_core. Import decap_core first: its torchvision shim must run
before open_clip in every worker process."""
import decap_core  # noqa: F401
