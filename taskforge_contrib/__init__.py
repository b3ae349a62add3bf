"""Integrations built on TaskForge's core and backends: the hosted service, metrics, tracing.

Modules here may import ``taskforge_core`` and ``taskforge_backends``; nothing below imports
this package.
"""
