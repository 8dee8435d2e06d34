"""Sources of readings: one package per transport, each with its decoders."""
