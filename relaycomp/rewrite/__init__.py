"""Rewrite helpers for passes: rules as data, merging parallel siblings."""
