"""pointcloud adapter (in progress)."""
