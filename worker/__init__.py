"""stateroom.worker: the worker process (user code, objects, storage)."""
