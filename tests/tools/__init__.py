"""Maintenance scripts, run by hand; never part of the installed package."""
