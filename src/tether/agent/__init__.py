"""The device agent: stdlib-only, outbound-only."""
