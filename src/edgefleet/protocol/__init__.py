"""Wire contracts shared by both ends of a connection, one sub-package per protocol."""
