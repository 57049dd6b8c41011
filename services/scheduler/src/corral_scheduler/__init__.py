"""The scheduler: the single serial lane between the cluster and the Ollama backend."""
