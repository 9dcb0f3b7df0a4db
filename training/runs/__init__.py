"""A run's records: the in-memory store, the recorder thread, the run database and its writer."""
