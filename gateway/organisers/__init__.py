"""Organisers: organisations and API keys, events and seat maps, public event info, the demo,
and the audit of an event's invariants."""
