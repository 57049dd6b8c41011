"""Corral dev/test infrastructure: throwaway RabbitMQ nodes, service processes, `make run`."""
