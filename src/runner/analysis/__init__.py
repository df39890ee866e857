"""Analyses of trained networks and the figures built from run directories."""
