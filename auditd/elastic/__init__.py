"""Elasticsearch: ship events, alerts and incidents; read events back; scale out.

- ``settings``: the `elastic:` config section and the Elasticsearch source's settings;
- ``templates``: the ECS events data stream and the alerts, incidents, leases indices;
- ``sink``: ``EventShipper``, the store's events table as a disk-backed buffer;
- ``source`` + ``ecs_format``: read events other daemons shipped, as batches;
- ``leases`` + ``partitioned`` + ``incidents``: threshold rules over every host's
  events, each partition of actors evaluated by one live daemon.
"""
