"""Door scanning: device tokens, the offline manifest, online and batch check-in, degraded mode
(docs/scanning.md)."""
