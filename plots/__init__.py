"""Figure functions. They read result tables only, never the simulator."""
