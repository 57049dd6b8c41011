"""Dev and test infrastructure for Corral: throwaway RabbitMQ nodes, service processes, `make run`."""
