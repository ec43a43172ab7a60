"""decap core library: CLIP, toy world, decoder, projection, memory. No Beam imports here."""
from decap_core import compat  # noqa: F401  (must run before anything imports torchvision)

__version__ = "0.1.0"
