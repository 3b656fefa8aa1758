"""The rules of a run: no processes, no sockets, no files."""
