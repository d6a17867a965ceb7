"""Who speaks: voice names and languages, and the reference recordings the Base models clone."""
