"""``decap report``'s parts: the sample it reads (``sample``), the modality gap (``gap``), the
paper's ablations (``ablations``), example captions (``examples``), the figures (``plots``) and
the HTML page (``page``)."""
