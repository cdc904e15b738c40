"""Gymnasium search-QA environments for multi-turn search agents (IGPO, arXiv 2510.14967).

Importing this package registers every ``igpo/...`` environment id with Gymnasium.
"""
