"""The build side of model packages: reading model metadata, building and signing packages."""
