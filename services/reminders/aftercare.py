"""Aftercare content (editable TOML files, see aftercare/README.md) and the pages behind links."""

from __future__ import annotations

import html
import tomllib
from dataclasses import dataclass
from pathlib import Path

SHIPPED = Path(__file__).resolve().parent / "aftercare"

#: Topic key, heading; every page has all of them but ``notes``.
TOPICS: tuple[tuple[str, str], ...] = (
    ("water", "Drink water"),
    ("heat_cold", "Heat or cold"),
    ("movement", "Gentle movement"),
    ("soreness", "Soreness is expected"),
    ("notes", "Good to know"),
    ("call_clinic", "When to call us"),
    ("urgent", "Get help right away"),
)
OPTIONAL_TOPICS = frozenset({"notes"})
FALLBACK = "general"


class AftercareError(ValueError):
    """An aftercare file is missing, unreadable or lacks a topic; names the file."""


@dataclass(frozen=True)
class Aftercare:
    key: str
    title: str
    topics: dict[str, str]


def normalize(modality: str) -> str:
    return modality.strip().lower().replace("-", "_").replace(" ", "_")


class AftercareLibrary:
    """Reads the files on every lookup, so a clinic's edit shows without a restart."""

    def __init__(self, directory: Path | None = None) -> None:
        self.directory = directory or SHIPPED

    def _read(self, path: Path) -> dict[str, object]:
        try:
            return tomllib.loads(path.read_text("utf-8"))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise AftercareError(f"{path}: {exc}") from exc

    def load(self) -> dict[str, Aftercare]:
        """Every modality's page content, keyed by file name and by each alias."""
        common_path = self.directory / "common.toml"
        common = self._read(common_path).get("topics", {}) if common_path.exists() else {}
        if not isinstance(common, dict):
            raise AftercareError(f"{common_path}: [topics] must be a table")
        found: dict[str, Aftercare] = {}
        for path in sorted(self.directory.glob("*.toml")):
            if path.stem == "common":
                continue
            data = self._read(path)
            own = data.get("topics", {})
            if not isinstance(own, dict):
                raise AftercareError(f"{path}: [topics] must be a table")
            topics = {str(k): str(v).strip() for k, v in {**common, **own}.items()}
            missing = [k for k, _ in TOPICS if k not in topics and k not in OPTIONAL_TOPICS]
            if missing:
                raise AftercareError(f"{path}: missing topics {', '.join(missing)}")
            page = Aftercare(path.stem, str(data.get("title", path.stem)), topics)
            aliases = data.get("aliases", [])
            for name in [path.stem, *(aliases if isinstance(aliases, list) else [])]:
                found[normalize(str(name))] = page
        if FALLBACK not in found:
            raise AftercareError(f"{self.directory}: no {FALLBACK}.toml to fall back on")
        return found

    def for_modality(self, modality: str | None) -> Aftercare:
        pages = self.load()
        return pages.get(normalize(modality or ""), pages[FALLBACK])


_STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:36rem;
margin:0 auto;padding:1rem 1.2rem 3rem;line-height:1.5;color:#1d2733;background:#fafbfc}
h1{font-size:1.4rem;margin:.5rem 0 1rem}h2{font-size:1.05rem;margin:1.4rem 0 .3rem}
.urgent{background:#fdecea;border-left:4px solid #c62828;padding:.6rem .9rem;border-radius:4px}
.muted{color:#5b6775;font-size:.9rem}a{color:#0b5cad}
"""


def page(title: str, body: str, status_note: str = "") -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width,initial-scale=1">'
        '<meta name=robots content="noindex">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body>{body}{status_note}</body></html>"
    )


def tel(phone: str, shown: str) -> str:
    return f'<a href="tel:{html.escape(phone)}">{html.escape(shown)}</a>' if phone else ""


def aftercare_page(content: Aftercare, location: str, phone: str, shown_phone: str) -> str:
    parts = [f"<h1>After your {html.escape(content.title.lower())} at {html.escape(location)}</h1>"]
    for key, heading in TOPICS:
        text = content.topics.get(key)
        if not text:
            continue
        css = ' class="urgent"' if key == "urgent" else ""
        parts.append(f"<h2>{heading}</h2><p{css}>{html.escape(text)}</p>")
    if phone:
        parts.append(f"<p>{html.escape(location)}: {tel(phone, shown_phone)}</p>")
    parts.append('<p class="muted">This page is for you only; please do not share its link.</p>')
    return page(f"Aftercare · {location}", "".join(parts))


REFERRAL_NEWS = {
    "accepted": "The provider we referred you to has accepted the referral and will contact "
    "you to arrange your first visit.",
    "scheduled": "Your first visit with the provider we referred you to has been scheduled. "
    "They will confirm the date and time with you.",
}

DISCIPLINES = {
    "physical_therapy": "physical therapy",
    "acupuncture": "acupuncture",
    "chiropractic": "chiropractic care",
}


def referral_page(status: str, discipline: str, clinic: str, phone: str, shown_phone: str) -> str:
    news = REFERRAL_NEWS.get(status, "There is an update on your referral.")
    kind = DISCIPLINES.get(discipline, "care")
    body = (
        f"<h1>An update on your referral for {html.escape(kind)}</h1><p>{html.escape(news)}</p>"
        f"<p>Questions? Call {html.escape(clinic)}"
        + (f" at {tel(phone, shown_phone)}" if phone else "")
        + ".</p>"
        '<p class="muted">This page is for you only; please do not share its link.</p>'
    )
    return page("An update for you", body)


def problem_page(title: str, text: str, clinic: str, phone: str, shown_phone: str) -> str:
    call = f" Call {html.escape(clinic)}" + (f" at {tel(phone, shown_phone)}" if phone else "")
    return page(title, f"<h1>{html.escape(title)}</h1><p>{html.escape(text)}{call}.</p>")
