"""``edgefleet demo``: the device half (:mod:`.device`) and the fleet half (:mod:`.fleet`)."""
