"""What the daemon tells people about itself: Prometheus metrics, the status file, the health rules, the
HTTP server and the streams' pictures, and what each process holds in memory."""
