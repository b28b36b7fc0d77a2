"""The run's record: the typed results, the run folder (store), the one reader, resume."""
