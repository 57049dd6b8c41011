"""The model manager: what the backend's models are, cached for the rest of the cluster."""
