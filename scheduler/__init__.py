"""Per-message path decisions: context, estimators, fusion, policies. Pure: no I/O, no clock."""
