"""`wabus fake-provider`: the notifier's stand-in for WAHA, Evolution and Meta, for tests and demos."""

from __future__ import annotations

import argparse

from . import fake_provider


def register(sub: argparse._SubParsersAction) -> None:
    fake = sub.add_parser("fake-provider", help="serve a fake WAHA / Evolution / Meta send API that records "
                                                "messages and posts acks (docs/providers.md)")
    fake_provider.add_arguments(fake)
    fake.set_defaults(func=fake_provider.run)
