"""Traffic: crafting and sending datagrams, expectations on what arrives, sniffing, impairing links."""
