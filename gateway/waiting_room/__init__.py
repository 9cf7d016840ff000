"""The virtual waiting room: join and poll (room), the per-worker queue cache, the admission
check for holds and checkout (gate), and the organiser's side (admin)."""
