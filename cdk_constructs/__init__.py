"""One L3 construct per container of the C4 diagram (see README for why not `constructs/`)."""
