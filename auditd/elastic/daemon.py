"""The Elasticsearch side of one daemon, as the service wires it: the client, the event
shipper, the leased `scope: cluster` rules and the follower that reads the fleet's
cluster alerts back for the local correlator.

    cluster = Cluster(runtime.settings.elastic, store)
    cluster.start(ruleset=runtime.ruleset)   # ship; cluster rules when the set has any
    cluster.set_rules(new_ruleset)           # after an accepted reload
    cluster.stop()                           # drains the shipper

Constructing it builds the client (no request yet).
"""

from __future__ import annotations

import logging

from auditd.elastic.client import build_client, node_name
from auditd.elastic.cluster_alerts import POSITION_KEY, ClusterAlertFollower, ClusterAlertReader
from auditd.elastic.cluster_rules import ClusterRuleEvaluator
from auditd.elastic.feeds import read_meta
from auditd.elastic.settings import ElasticSettings
from auditd.elastic.sink import EventShipper, unshipped_guard_sql
from auditd.ops.cluster_rules import write_costs
from auditd.store.sqlite import Store

log = logging.getLogger("neo_auditd.elastic")


class Cluster:
    """The Elasticsearch side of one daemon: client, shipper, cluster-wide detector."""

    def __init__(self, settings: ElasticSettings, store: Store):
        self.settings = settings
        self.es = build_client(self.settings)
        self.agent = node_name(self.settings)
        self.store = store
        self.shipper = None
        self.detector = None
        self.follower = None  # reads the fleet's cluster alerts back for the local correlator

    def start(self, *, detect: bool = True, ruleset=None) -> None:
        """Ship; with `detect`, run the leased `scope: cluster` rules of `ruleset` and
        read the fleet's cluster alerts back (only when the set has cluster rules: a
        daemon without them pays nothing)."""
        if self.settings.ship.enabled:
            self.shipper = EventShipper(self.es, self.store.path, self.settings, agent=self.agent)
            self.shipper.start()
        if detect and ruleset is not None and ruleset.scoped("cluster"):
            self.start_detection(ruleset)

    def start_detection(self, ruleset) -> None:
        self.detector = ClusterRuleEvaluator(self.es, self.settings, ruleset, agent=self.agent,
                                             on_round=self._record_costs)
        self.detector.start()
        self.follower = ClusterAlertFollower(
            ClusterAlertReader(self.es, self.settings.alerts_index, self.settings.fleet),
            every_s=min(self.settings.cluster.evaluate_every.seconds, 5.0),
            position=read_meta(self.store.conn, POSITION_KEY))
        self.follower.start()

    def set_rules(self, ruleset) -> None:
        """A reload: the evaluator takes the new set (started now if it has the first cluster rule)."""
        if self.detector is not None:
            self.detector.set_rules(ruleset)
        elif ruleset.scoped("cluster"):
            self.start_detection(ruleset)

    def _record_costs(self, costs) -> None:
        """Each round's cost per cluster rule, for `status` (metrics read the evaluator)."""
        try:
            write_costs(self.store.path, [c.as_dict() for c in costs], self.settings.cluster.evaluate_every.seconds,
                        self.settings.cluster.settle.seconds)
        except Exception as exc:  # noqa: BLE001 - a full disk: the metrics and the log still say it
            log.warning("cluster rule costs not recorded", extra={"error": str(exc)})

    def delivers_as_fleet(self) -> bool:
        """While this daemon reads the fleet's cluster alerts back, every daemon of the fleet
        holds their incidents and renders their notices: then its deliver process sends only
        while it holds the fleet's deliver lease, and records what it delivered for the
        others (elastic/deliveries.py). Otherwise its incidents are its own host's, and no
        other daemon renders them."""
        return self.follower is not None

    def wake(self, _pipeline=None) -> None:
        if self.shipper is not None:
            self.shipper.wake()

    def retention_guard(self) -> str | None:
        """Segments not yet shipped must outlive their retention until they are."""
        if self.shipper is None:
            return None
        return unshipped_guard_sql()

    def stop(self) -> None:
        if self.follower is not None:
            self.follower.stop()
        if self.detector is not None:
            self.detector.stop()
        if self.shipper is not None:
            self.shipper.stop(self.settings.ship.drain_timeout_s)
            self.shipper.close()
