"""XMP sidecars that digiKam, Lightroom and darktable read: stars, pick/reject, the Beholder score.

Fields Beholder owns (and the only ones it changes in an existing sidecar):

- ``xmp:Rating``: the stars, 1..5 (every photo tool reads it);
- ``xmp:Label``: ``Green`` for picks, ``Red`` for alternates (Lightroom's and darktable's colour
  labels; digiKam maps them to its colour labels too);
- ``digiKam:PickLabel``: 3 (accepted) for picks, 1 (rejected) for alternates (digiKam's pick flag);
- ``beholder:Mean``, ``beholder:Std``, ``beholder:Percentile`` (of AVA), ``beholder:Group``,
  ``beholder:Pick`` and ``beholder:Model`` in Beholder's own namespace.

Everything else in an existing sidecar (keywords, captions, develop settings) is kept. Sidecars
are parsed with defusedxml (no entity expansion or external entities: a sidecar is untrusted
input) and written atomically. The original photo is never opened for writing.
"""

from __future__ import annotations

import io
import logging
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from xml.etree import ElementTree as ET

from beholder.files import atomic_write_bytes

log = logging.getLogger(__name__)

RDF = "http://www.w3.org/1999/02/22-rdf-syntax-ns#"
NAMESPACES = {
    "x": "adobe:ns:meta/",
    "rdf": RDF,
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "digiKam": "http://www.digikam.org/ns/1.0/",
    "beholder": "https://beholder-aesthetics.github.io/ns/1.0/",
}
PICK_LABEL, ALTERNATE_LABEL = "Green", "Red"
DIGIKAM_ACCEPTED, DIGIKAM_REJECTED = "3", "1"

#: Sidecar naming: Lightroom (and Capture One) replace the extension, darktable and digiKam append.
NAMING = ("replace", "append")

#: An existing sidecar larger than this is refused, not read: real ones, develop history and all,
#: are kilobytes to a few megabytes; a 2 GB one would be read and parsed whole.
MAX_SIDECAR_BYTES = 16 * 1024 * 1024

# The XMP packet wrapper; "\ufeff" marks the encoding, as the XMP specification asks.
_PACKET_HEAD = '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
_PACKET_TAIL = '\n<?xpacket end="w"?>\n'


class SidecarError(ValueError):
    """An existing sidecar that cannot be merged (not XML, or not XMP); it is left untouched."""

    def __init__(self, path: Path, problem: str):
        super().__init__(f"{path}: {problem}")
        self.path, self.problem = path, problem


def qname(prefix: str, local: str) -> str:
    return f"{{{NAMESPACES[prefix]}}}{local}"


def owned_fields(
    *, stars: int, pick: bool, mean: float, std: float, percentile: float, group: int, model: str
) -> dict[str, str]:
    """The Beholder-owned properties of one photo, as ``{qualified name: text}``."""
    return {
        qname("xmp", "Rating"): str(int(stars)),
        qname("xmp", "Label"): PICK_LABEL if pick else ALTERNATE_LABEL,
        qname("digiKam", "PickLabel"): DIGIKAM_ACCEPTED if pick else DIGIKAM_REJECTED,
        qname("beholder", "Mean"): f"{mean:.4f}",
        qname("beholder", "Std"): f"{std:.4f}",
        qname("beholder", "Percentile"): f"{percentile:.1f}",
        qname("beholder", "Group"): str(int(group)),
        qname("beholder", "Pick"): "True" if pick else "False",
        qname("beholder", "Model"): model,
    }


def short_name(name: str) -> str:
    """``{uri}local`` -> ``prefix:local`` for messages."""
    uri, _, local = name[1:].partition("}")
    prefix = next((p for p, u in NAMESPACES.items() if u == uri), uri)
    return f"{prefix}:{local}"


def sidecar_paths(photos: list[Path], naming: str = "replace") -> dict[Path, Path]:
    """The sidecar of each photo: ``NAME.xmp`` ("replace") or ``NAME.EXT.xmp`` ("append").

    With "replace", photos that would share a sidecar (``a.jpg`` and ``a.png``) get the
    "append" form instead, so that no photo's fields overwrite another's.
    """
    if naming not in NAMING:
        raise ValueError(f"sidecar naming must be one of {NAMING}, got {naming!r}")
    appended = {photo: photo.with_name(photo.name + ".xmp") for photo in photos}
    if naming == "append":
        return appended
    replaced = {photo: photo.with_suffix(".xmp") for photo in photos}
    counts: dict[Path, int] = {}
    for target in replaced.values():
        key = Path(str(target).lower())  # case-insensitive file systems collide too
        counts[key] = counts.get(key, 0) + 1
    return {
        photo: appended[photo] if counts[Path(str(target).lower())] > 1 else target
        for photo, target in replaced.items()
    }


@dataclass
class SidecarChange:
    """What writing one sidecar does: ``changes`` maps a field to ``(old or None, new)``."""

    photo: Path
    sidecar: Path
    exists: bool
    changes: dict[str, tuple[str | None, str]] = field(default_factory=dict)
    content: bytes = b""

    def describe(self) -> str:
        if not self.changes:
            return f"leave {self.sidecar} unchanged"
        verb = "update" if self.exists else "create"
        parts = [
            f"{short_name(k)} {old}->{new}" if old is not None else f"{short_name(k)}={new}"
            for k, (old, new) in self.changes.items()
        ]
        return f"{verb} {self.sidecar} ({', '.join(parts)})"


def _parse(data: bytes, path: Path) -> ET.Element:
    try:
        from defusedxml import ElementTree as safe_tree
    except ImportError:  # pragma: no cover - the cull extra installs defusedxml
        safe_tree = None
    try:
        if safe_tree is not None:
            for _, (prefix, uri) in safe_tree.iterparse(io.BytesIO(data), events=("start-ns",)):
                _register(prefix, uri)
            return safe_tree.fromstring(data)
        log.warning("defusedxml is not installed; parsing %s with the standard library", path)
        return ET.fromstring(data)
    except ET.ParseError as exc:
        raise SidecarError(path, f"not valid XML ({exc})") from exc
    except Exception as exc:  # defusedxml's EntitiesForbidden, DTDForbidden...
        raise SidecarError(path, f"refused ({type(exc).__name__}: {exc})") from exc


def _register(prefix: str, uri: str) -> None:
    # ElementTree names prefixes from one global table; keep each file's own prefixes on output.
    # "ns0"-style prefixes are reserved by ElementTree (it invents them), so they are skipped.
    if prefix and not re.fullmatch(r"ns\d+", prefix):
        try:
            ET.register_namespace(prefix, uri)
        except ValueError:
            log.debug("cannot keep XML prefix %r for %s", prefix, uri)


def _new_packet() -> ET.Element:
    meta = ET.Element(qname("x", "xmpmeta"), {qname("x", "xmptk"): "Beholder"})
    rdf = ET.SubElement(meta, qname("rdf", "RDF"))
    ET.SubElement(rdf, qname("rdf", "Description"), {qname("rdf", "about"): ""})
    return meta


def merge_sidecar(existing: bytes | None, fields: dict[str, str], path: Path) -> tuple[bytes, dict]:
    """Merge ``fields`` into an existing sidecar's bytes (or a new packet): ``(new bytes, changes)``.

    Each owned field is removed wherever it appears (as an attribute of any ``rdf:Description``,
    or as a child element) and written once, as an attribute of the first description.
    """
    root = _parse(existing, path) if existing is not None else _new_packet()
    rdf = root if root.tag == qname("rdf", "RDF") else root.find(f".//{qname('rdf', 'RDF')}")
    if rdf is None:
        raise SidecarError(path, "no rdf:RDF element: not an XMP sidecar")
    descriptions = rdf.findall(qname("rdf", "Description"))
    if not descriptions:
        descriptions = [ET.SubElement(rdf, qname("rdf", "Description"), {qname("rdf", "about"): ""})]
    changes: dict[str, tuple[str | None, str]] = {}
    for name, value in fields.items():
        old: str | None = None
        for description in descriptions:
            if name in description.attrib:
                old = description.attrib.pop(name)
            for child in description.findall(name):
                old = (child.text or "").strip() if old is None else old
                description.remove(child)
        descriptions[0].set(name, value)
        if old != value:
            changes[name] = (old, value)
    for prefix, uri in NAMESPACES.items():  # Beholder's prefixes win over a file's odd choices
        ET.register_namespace(prefix, uri)
    try:
        body = ET.tostring(root, encoding="unicode")
    except RecursionError:  # expat parses any depth; ElementTree's writer recurses per level
        raise SidecarError(path, "elements nested too deeply to write back") from None
    return (_PACKET_HEAD + body + _PACKET_TAIL).encode("utf-8"), changes


def plan_sidecar(photo: Path, sidecar: Path, fields: dict[str, str]) -> SidecarChange:
    """Read ``sidecar`` if it exists and work out the merged content; writes nothing."""
    existing = _read_existing(sidecar)
    content, changes = merge_sidecar(existing, fields, sidecar)
    return SidecarChange(photo, sidecar, existing is not None, changes, content)


def _read_existing(sidecar: Path) -> bytes | None:
    """The bytes of an existing sidecar, None if there is none; SidecarError for one that is not a
    regular file (a FIFO would block the read forever, /dev/zero never ends) or is too large."""
    try:
        info = os.stat(sidecar)
    except FileNotFoundError:
        return None
    if not stat.S_ISREG(info.st_mode):
        raise SidecarError(sidecar, "not a regular file (a directory, FIFO, device or socket); left as it is")
    if info.st_size > MAX_SIDECAR_BYTES:
        raise SidecarError(
            sidecar, f"larger than {MAX_SIDECAR_BYTES:,} bytes ({info.st_size:,}); refused, left as it is"
        )
    with open(sidecar, "rb") as handle:
        data = handle.read(MAX_SIDECAR_BYTES + 1)  # a file that grew since the stat
    if len(data) > MAX_SIDECAR_BYTES:
        raise SidecarError(sidecar, f"larger than {MAX_SIDECAR_BYTES:,} bytes; refused, left as it is")
    return data


def write_sidecar(change: SidecarChange) -> bool:
    """Write a planned sidecar atomically; returns False (and writes nothing) when unchanged."""
    if not change.changes:
        return False
    if change.sidecar == change.photo or change.sidecar.suffix.lower() != ".xmp":
        raise SidecarError(change.sidecar, "refusing to write a sidecar over a photo")
    atomic_write_bytes(change.sidecar, change.content)
    return True


def plan_sidecars(result, naming: str = "replace") -> tuple[list[SidecarChange], list[SidecarError]]:
    """The sidecar change of every rated photo of a :class:`~beholder.cull.run.CullResult`.

    Unreadable photos get no sidecar. A sidecar that cannot be merged is reported in the second
    list and left as it is; the other photos still get theirs.
    """
    rated = [p for p in result.photos if p.ok]
    targets = sidecar_paths([Path(p.path) for p in rated], naming)
    model = str(result.options.get("model", ""))
    changes: list[SidecarChange] = []
    errors: list[SidecarError] = []
    for photo in rated:
        fields = owned_fields(
            stars=photo.stars,
            pick=photo.pick,
            mean=photo.mean,
            std=photo.std,
            percentile=photo.ava_percentile,
            group=photo.group,
            model=model,
        )
        try:
            changes.append(plan_sidecar(Path(photo.path), targets[Path(photo.path)], fields))
        except (SidecarError, OSError) as exc:
            errors.append(
                exc if isinstance(exc, SidecarError) else SidecarError(targets[Path(photo.path)], str(exc))
            )
    return changes, errors


def write_sidecars(changes: list[SidecarChange]) -> int:
    """Write every changed sidecar; returns how many were written."""
    return sum(write_sidecar(change) for change in changes)
