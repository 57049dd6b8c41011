"""The library every Corral service shares: wire schemas, settings, broker, telemetry."""

__version__ = "0.1.0"
