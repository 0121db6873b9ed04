"""The model compiler: trained models -> artifacts optimised per device class (``edgefleet compile``)."""
