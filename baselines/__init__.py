"""Competitor caches, one file each, shaped like dpcache.hooks."""
