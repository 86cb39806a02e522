"""Code used by more than one StyleCast process: config, protocol, rings, bus, metrics, flow."""
