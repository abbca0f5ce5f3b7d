"""Which instance a request goes to."""
