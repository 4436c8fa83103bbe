"""stateroom.supervisor: the trio process that owns the port, the workers and the data."""
