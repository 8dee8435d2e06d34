"""MQTT source: subscriptions on a broker, acknowledged only once readings are on disk."""
