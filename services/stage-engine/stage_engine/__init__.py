"""Stage engine: moves customers through lifecycle stages and health states."""
