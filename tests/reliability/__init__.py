"""Reliability and security suite: hostile input, faults and signals (issue 7)."""
