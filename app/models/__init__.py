"""Qt item models over Studio data: the adapter table and the library gallery."""
