"""The service around the workers: the supervisor, its worker processes and their restart policy, decoder
groups, inference workers and stream placement, heartbeats, systemd notification."""
