"""Plumbing shared by every service: money, cycle dates, settings, the consumer runtime.

Never a service's business rules: those live in each service's own ``domain`` module.
"""
