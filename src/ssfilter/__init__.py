"""ssfilter: fully unsupervised industrial anomaly detection on noisy data (SSFilter)."""

__version__ = "0.1.0"
