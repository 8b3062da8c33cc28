"""Topologies as data: the model, its TOML file format, and the shipped files (fixtures/topologies)."""
