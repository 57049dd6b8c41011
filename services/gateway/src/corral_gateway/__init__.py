"""The gateway: Corral's HTTP edge, speaking Ollama's API and talking only to RabbitMQ."""
