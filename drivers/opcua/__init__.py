"""OPC UA client driver: subscriptions with a polling fallback, reconnect by itself."""
