"""Media helpers shared by the providers, the runner's preflight and the report: reading
video files (duration, sampled frames, a poster frame). Imports only :mod:`mmsafe.types`;
PyAV (the ``video`` extra) is imported lazily, and GIF needs only Pillow."""
