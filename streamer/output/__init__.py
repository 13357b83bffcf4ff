"""What leaves the daemon: the wire protocol, the ZeroMQ publisher, its CURVE keys, the subscriber client and
the forwarder."""
