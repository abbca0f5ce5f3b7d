"""Running the gateway: one process serving, the parent of several, live reload."""
