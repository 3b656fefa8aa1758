"""Several hosts over ZeroMQ: frames, protocol, master, slave, spawn."""
