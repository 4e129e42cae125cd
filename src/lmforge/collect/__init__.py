"""Collection: one module per source, each yielding records with provenance."""
