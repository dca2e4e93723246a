"""``billing``: the operators' command (installed by the project, ``[project.scripts]``).

It is not a service: it owns no data and consumes no topic as a group. It composes what each
service exposes for operators (``services/<name>/queries.py``, each reading only its own
database with that service's settings) and talks to the system through the contract's topics
(a trigger on ``billing.commands``, dead letters re-driven to their topic, ``metering.alerts``
followed by a consumer of its own). It lives beside ``services/``, not in it, so "no service
imports another service" stays true: only this front end imports several services' queries.
"""
