"""The Compute Engine adapter: request builders (``requests``), the executor (``adapter``),
operation waits (``operations``), error mapping (``errors``), zone failover (``zones``), the SSH
firewall rule (``firewall``) and the ``up/stop/start/down/status`` flows (``lifecycle``).

Reads that must answer fast (status, pre-flight lookups) go as raw REST JSON through
``factory.session``; mutations go through the google-cloud-compute clients built by the factory,
fed the very bodies the dry-run prints.
"""
