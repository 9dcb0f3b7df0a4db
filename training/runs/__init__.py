"""A run's records: the in-memory store, the recorder thread, the run database (a SQLite file or a
PostgreSQL server, behind one backend interface), its writer, and copying runs between databases."""
