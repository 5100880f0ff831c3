"""Would the cluster take this config's index templates? Asked by `check` and `replay`.

The cluster simulates each template (``POST _index_template/_simulate/<name>``), which
validates it exactly as installing it does -- another template over the same indices
at the same priority, a mapping it cannot take -- and changes nothing. A refusal is a
configuration problem, located at the `elastic.` key that names what the template
covers; a cluster that cannot be asked is only a warning, since the daemon ships once
it is back.
"""

from __future__ import annotations

import dataclasses

from elasticsearch import ApiError, Elasticsearch, TransportError

from auditd.config.located import Doc, PathKey, Problems, format_key_path
from auditd.elastic import templates
from auditd.elastic.client import build_client
from auditd.elastic.settings import ElasticSettings
from auditd.errors import ConfigProblem

PREFLIGHT_TIMEOUT_S = 10.0  # `check` must answer soon, even when a host swallows packets


def check_templates(settings: ElasticSettings, doc: Doc | None, problems: Problems,
                    warnings: list[ConfigProblem], *, es: Elasticsearch | None = None) -> None:
    """Add a located problem per refused template, or a warning if the cluster cannot be asked."""
    if not settings.install_templates:
        return  # the operator manages the templates: nothing of ours to refuse
    where: PathKey = ("elastic",)
    try:
        if es is None:
            timeout = min(settings.request_timeout_s, PREFLIGHT_TIMEOUT_S)
            es = build_client(dataclasses.replace(settings, request_timeout_s=timeout))
        refused = templates.simulate(es, settings)
    except ValueError as exc:  # urllib3's LocationParseError: a host no request can be made to
        problems.add(doc, where + ("hosts",), f"not a usable URL: {_short(exc)}")
        return
    except (ApiError, TransportError, OSError) as exc:
        hosts = ", ".join(settings.hosts)
        warnings.append(_at(doc, where + ("hosts",), f"could not ask Elasticsearch ({hosts}) whether it takes "
                                                     f"this config's index templates: {_short(exc)}"))
        return
    for refusal in refused:
        problems.add(doc, where + (refusal.template.key,), str(refusal))


def _at(doc: Doc | None, path: PathKey, message: str) -> ConfigProblem:
    return ConfigProblem(None, format_key_path(path), message) if doc is None else doc.problem(path, message)


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc)[:300]}"
