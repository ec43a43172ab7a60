"""decap jobs: the command line and the work that is not a Beam pipeline."""
import decap_core  # noqa: F401  (installs the torchvision shim before open_clip is imported)
