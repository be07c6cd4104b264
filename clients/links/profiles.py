"""Link profiles: what a link adds, read from the [links.NAME] tables of a TOML file.

By default that file is links.toml beside this module, the profiles every command's
`--link NAME` offers; any TOML with [links.NAME] tables will do (`--links-file`).
"""

from __future__ import annotations

import importlib.resources
import tomllib
from dataclasses import asdict, dataclass

NUMBER_FIELDS = ("rtt_ms", "jitter_ms", "rate_mbit", "loss_percent", "queue_ms")


class ProfileError(ValueError):
    """A links file or profile name is wrong; the message is one line for the user."""


@dataclass(frozen=True)
class LinkProfile:
    name: str
    description: str = ""
    rtt_ms: float = 0.0  # added round trip, half on each direction
    jitter_ms: float = 0.0  # per direction
    rate_mbit: float | None = None  # per direction; None: no cap
    loss_percent: float = 0.0  # per direction
    queue_ms: float = 50.0  # rate limiter's queue, as time at the rate

    def __post_init__(self) -> None:
        for field in NUMBER_FIELDS:
            value = getattr(self, field)
            if value is not None and (not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0):
                raise ProfileError(f"link {self.name!r}: {field} must be a number >= 0, not {value!r}")
        if self.loss_percent > 100:
            raise ProfileError(f"link {self.name!r}: loss_percent is at most 100")
        if self.rate_mbit is not None and self.rate_mbit <= 0:
            raise ProfileError(f"link {self.name!r}: rate_mbit must be > 0 (leave it out for no cap)")
        if self.jitter_ms and not self.rtt_ms:
            raise ProfileError(f"link {self.name!r}: jitter_ms needs a delay (rtt_ms) to vary")

    @property
    def delay_ms(self) -> float:
        """Delay added to each direction."""
        return self.rtt_ms / 2

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        parts = []
        if self.rtt_ms:
            parts.append(f"{self.rtt_ms:g} ms RTT" + (f" ±{self.jitter_ms:g} ms" if self.jitter_ms else ""))
        if self.rate_mbit:
            parts.append(f"{self.rate_mbit:g} Mbit/s")
        if self.loss_percent:
            parts.append(f"{self.loss_percent:g}% loss")
        return ", ".join(parts) or "nothing added"


def default_links_file() -> str:
    """links.toml of this package: serverzoo's own link profiles."""
    return str(importlib.resources.files(__package__) / "links.toml")


def load_profiles(path: str | None = None) -> dict[str, LinkProfile]:
    """All profiles of a links file, by name. ProfileError for anything malformed."""
    path = path or default_links_file()
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ProfileError(f"cannot read links file {path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProfileError(f"links file {path}: {exc}") from None
    if not isinstance(data.get("links"), dict):
        raise ProfileError(f"links file {path}: no [links.NAME] tables")
    return profiles_from_tables(data["links"], f"links file {path}")


def profiles_from_tables(links: dict, where: str) -> dict[str, LinkProfile]:
    """The profiles of an already parsed [links] table (`where` names the file in messages)."""
    profiles = {}
    allowed = {"description", *NUMBER_FIELDS}
    for name, table in links.items():
        if not isinstance(table, dict):
            raise ProfileError(f"{where}: links.{name} must be a table")
        unknown = set(table) - allowed
        if unknown:
            raise ProfileError(
                f"{where}: links.{name}: unknown key(s) {', '.join(sorted(unknown))} "
                f"(known: {', '.join(sorted(allowed))})"
            )
        profiles[name] = LinkProfile(name=name, **table)
    return profiles


def get_profile(name: str, path: str | None = None) -> LinkProfile:
    profiles = load_profiles(path)
    if name not in profiles:
        raise ProfileError(f"no link named {name!r} (known: {', '.join(profiles)})")
    return profiles[name]
