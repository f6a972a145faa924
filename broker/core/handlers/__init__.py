"""What each command does: plain functions over the parts of ``Core`` they touch, one module per area."""
