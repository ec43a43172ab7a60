"""Shared fixtures. No test reaches the network: hub look-ups are switched off here."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import decap_core  # noqa: E402,F401  (torchvision shim before open_clip)
