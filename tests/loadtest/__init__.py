"""Load-test support: planted bugs (mutations of the Lua scripts) that the audit must catch."""
