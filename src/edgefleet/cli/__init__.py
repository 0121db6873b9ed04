"""The ``edgefleet`` command line. Each area registers its own sub-commands module."""
