"""Scenarios: a TOML file of topology, forwarder, traffic and expectations; its model, loader and runner."""
