"""edge-gateway: sensors -> durable disk buffer -> AMQP, for small machines that lose power."""

__version__ = "0.1.0"
