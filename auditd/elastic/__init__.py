"""Elasticsearch: ship events, alerts and incidents; read events back; cluster rules.

- ``settings``: the `elastic:` config section and the Elasticsearch source's settings;
- ``templates``: the ECS events data stream and the alerts, incidents, leases indices;
- ``sink``: ``EventShipper``, the store's events table as a disk-backed buffer;
- ``source`` + ``ecs_format``: read events other daemons shipped, as batches;
- ``leases`` + ``cluster_rules`` + ``cluster_state`` + ``rule_query``: the rules with
  ``scope: cluster`` over every host's events, each run by the live daemon holding its
  lease, their alerts read back by every daemon (``cluster_alerts``).
"""
