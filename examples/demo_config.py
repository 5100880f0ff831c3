"""The demo's configuration: examples/config.yaml with a `deliver:` section that sends
to the demo's receivers on loopback (examples/receivers.py), so that the demo shows
messages going out, not only rendered.

    python examples/demo_config.py --ports examples/out/receivers.json --out examples/out/demo.yaml

The example config itself names no channels: a deployment names its own mail relay,
gateways and chat robots (README, "Configuration"; docs/deliver.md). The file written
here reads the same store as examples/config.yaml (so `-c examples/config.yaml` shows
what the demo's daemon did); its paths are made absolute.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def absolute(path: str) -> str:
    return str((HERE / path).resolve()) if not Path(path).is_absolute() else path


def demo_config(ports: dict, received: Path) -> dict:
    config = yaml.safe_load((HERE / "config.yaml").read_text(encoding="utf-8"))
    config["state_dir"] = absolute(config["state_dir"])
    for source in config["sources"]:
        source["paths"] = [absolute(p) for p in source["paths"]]
    config["pseudonym"]["key_file"] = absolute(config["pseudonym"]["key_file"])
    config["directory"]["path"] = absolute(config["directory"]["path"])
    config["rules"]["paths"] = [absolute(p) for p in config["rules"]["paths"]]
    respond = config["respond"]
    respond["contacts"]["csv"] = absolute(respond["contacts"]["csv"])
    for manifest in respond["export_manifests"]:
        manifest["paths"] = [absolute(p) for p in manifest["paths"]]
    http = f"http://127.0.0.1:{ports['http']}"
    config["deliver"] = {
        "retry": {"attempts": 3, "initial": "1s", "max": "5s"},
        "channels": {
            "email": {"host": "127.0.0.1", "port": ports["smtp"], "security": "none",
                      "sender": "neo-auditd@neo-retail.example"},
            "sms": {"url": f"{http}/sms"},
            "push": {"url": f"{http}/push"},
            "letter": {"spool": str(received / "letters"), "format": "html"},
            "portal": {"folder": str(received / "portal")},
        },
        "to": {
            "security-team": [
                {"channel": "chat", "chat": {"service": "json", "url": f"json://127.0.0.1:{ports['http']}/security"}},
                {"channel": "email", "address": "security@neo-retail.example"},
            ],
            "dpo": [{"channel": "email", "address": "dpo@neo-retail.example"}],
            "yunnan-cac": [{"channel": "email", "address": "report@yunnan-cac.example"}],
            "kunming-psb": [{"channel": "letter", "address": "昆明市公安局网安支队", "name": "网安支队"}],
            "management": [{"channel": "email", "address": "management@neo-retail.example"}],
        },
    }
    return config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ports", type=Path, required=True, help="the receivers' ports file")
    parser.add_argument("--received", type=Path, required=True, help="the receivers' folder")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    config = demo_config(json.loads(args.ports.read_text()), args.received.resolve())
    args.out.write_text("# written by examples/demo_config.py: examples/config.yaml, delivering to the demo's "
                        "receivers\n" + yaml.safe_dump(config, allow_unicode=True, sort_keys=False), encoding="utf-8")


if __name__ == "__main__":
    main()
