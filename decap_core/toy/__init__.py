"""The toy world, the offline stand-in for web images and CLIP's pre-training: ``world`` (scenes,
rendering, the caption grammar), ``zero_shot`` (what a CLIP sees of it), ``evaluation`` (scoring
captions against a scene's objects), ``plots`` and ``archive`` (held-out scenes as image tars)."""
