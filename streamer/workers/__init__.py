"""Worker processes: one source worker per stream, one inference worker. Started by the supervisor."""
