"""Cycle close: exactly one correct invoice per account and cycle, from a batch trigger."""
