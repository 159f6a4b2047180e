"""The providers' real payloads from ../shared/samples/webhooks, as the tests feed them to the gateway."""

from __future__ import annotations

import json
from pathlib import Path

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "samples" / "webhooks"


def sample_path(name: str) -> Path:
    path = SAMPLES / name
    if not path.exists():
        raise FileNotFoundError(f"{path}: the samples live in ../shared beside the checkout")
    return path


def sample_bytes(name: str) -> bytes:
    return sample_path(name).read_bytes()


def webhook_samples() -> list[str]:
    """Every webhook sample (not the `_api.` send responses), as provider/file names."""
    found = sorted(f"{p.parent.name}/{p.name}" for p in SAMPLES.glob("*/*.json") if not p.name.startswith("_api."))
    if not found:
        # Never a silent skip: without the samples the gateway is not tested against real payloads.
        raise FileNotFoundError(f"no webhook samples in {SAMPLES}: the samples live in ../shared beside the checkout")
    return found


def as_posted(name: str) -> tuple[str, bytes]:
    """(provider endpoint, body): raw Baileys events arrive wrapped by their bridge, Evolution API."""
    provider, file = name.split("/")
    body = sample_bytes(name)
    if provider == "baileys":
        event = "messages.update" if file.startswith("messages.update") else "messages.upsert"
        wrapped = {"event": event, "instance": "default", "data": json.loads(body)}
        return "evolution", json.dumps(wrapped).encode()
    return provider, body


def session_of(name: str) -> str:
    """The WAHA session, Evolution instance or Meta phone-number id a sample is for: its tenant's `session`."""
    provider, body = as_posted(name)
    payload = json.loads(body)
    if provider == "meta":
        (number,) = {c["value"]["metadata"]["phone_number_id"] for e in payload["entry"] for c in e["changes"]}
        return number
    return payload["session" if provider == "waha" else "instance"]
