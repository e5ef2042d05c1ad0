from evidence_support import admit, atlas  # noqa: F401  (fixtures)
