"""edray: error-driven, forgetting-aware tuning of multimodal models on Ray."""

__version__ = "0.1.0"
