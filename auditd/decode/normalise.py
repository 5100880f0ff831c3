"""The decode + normalise stage: a batch of raw records -> AccessEvents, quarantine, skips.

Nothing a log line holds can stop the stage: a record that cannot be decoded or mapped
is quarantined with its reason, a valid record that is not an access (a csvlog
checkpoint, a blank line) is skipped and counted, and every other record is an event.

``event.id`` is ``"<first 16 characters of the file's fingerprint>:<byte offset>"``:
the same record of the same file always gets the same id, so a batch replayed after
a crash (the checkpoint is committed with the events) never duplicates an event.
"""

from __future__ import annotations

from auditd.decode.formats import Format
from auditd.decode.quarantine import Quarantined
from auditd.errors import DecodeError
from auditd.event import AccessEvent
from auditd.sources.base import Batch

EVENT_ID_FINGERPRINT_CHARS = 16
# Where a format that maps operations it does not know to `other` keeps the raw name,
# so that rules and the unmapped-operation metric can name it.
UNMAPPED_LABEL = "event_name"


def event_id(fingerprint: str, offset: int) -> str:
    return f"{fingerprint[:EVENT_ID_FINGERPRINT_CHARS]}:{offset}"


class Normaliser:
    """Applies one format to the batches of one source."""

    def __init__(self, fmt: Format, source_name: str | None = None):
        self.format = fmt
        self.source_name = source_name
        self.counts_unmapped = fmt.maps_other  # the pipeline counts `other` events by name

    def process(self, batch: Batch, source_name: str | None = None, *, start: int = 0,
                stop: int | None = None) -> tuple[list[AccessEvent], list[Quarantined], int]:
        """(events, quarantined records, number of records skipped as not accesses) of the
        batch's records[start:stop].

        Quarantined records carry `source_name`, else the name given at construction,
        else the batch's source.
        """
        source_name = source_name or self.source_name or batch.source
        facts_of = self.format.facts
        dataset, log_path = self.format.dataset, batch.path
        id_prefix = event_id(batch.fingerprint, 0)[:-1]  # "<fingerprint[:16]>:"
        events: list[AccessEvent] = []
        quarantined: list[Quarantined] = []
        skipped = 0
        records, offsets = batch.records, batch.offsets
        if start or (stop is not None and stop < len(records)):
            records, offsets = records[start:stop], offsets[start:stop]
        if self.format.events is not None:
            chunk = self.format.events(records, offsets, id_prefix, log_path, dataset)
            if chunk is not None:
                return chunk, quarantined, skipped  # every record an ordinary access
        for record, offset in zip(records, offsets):
            try:
                if not record.isascii():
                    # JSON and every text log here are UTF-8 (RFC 8259 §8.1); a fast decoder
                    # skipping an unmapped field would otherwise let broken bytes through
                    record.decode("utf-8")
                facts = facts_of(record)
                if facts is None:
                    skipped += 1
                    continue
                facts["event_id"] = f"{id_prefix}{offset}"
                facts["log_path"] = log_path
                facts["log_offset"] = offset
                facts["dataset"] = dataset
                events.append(AccessEvent(**facts))
            except DecodeError as exc:
                quarantined.append(Quarantined.of(source_name, log_path, offset, str(exc), record))
            except UnicodeDecodeError as exc:
                reason = f"invalid UTF-8 at byte {exc.start}"
                quarantined.append(Quarantined.of(source_name, log_path, offset, reason, record))
            except Exception as exc:  # noqa: BLE001 - a bug must cost one record, not the pipeline
                reason = f"internal error: {type(exc).__name__}: {exc}"
                quarantined.append(Quarantined.of(source_name, log_path, offset, reason, record))
        return events, quarantined, skipped
