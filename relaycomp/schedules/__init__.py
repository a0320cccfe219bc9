"""Kernel schedules per target family; the schedule passes in ``passes/`` apply them."""
