"""What a run keeps on disk: checkpoint, failures file, codec."""
