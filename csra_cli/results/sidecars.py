"""Sidecar files beside each image: ``.txt`` captions and ``.xmp`` keyword metadata."""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

from ..fileio import atomic_write_bytes
from ..data.inputs import IMAGE_EXTENSIONS

NS = {
    "x": "adobe:ns:meta/",
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "dc": "http://purl.org/dc/elements/1.1/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "xmpMM": "http://ns.adobe.com/xap/1.0/mm/",
    "stEvt": "http://ns.adobe.com/xap/1.0/sType/ResourceEvent#",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
    "exif": "http://ns.adobe.com/exif/1.0/",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
    "crs": "http://ns.adobe.com/camera-raw-settings/1.0/",
    "Iptc4xmpCore": "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/",
    "xmpRights": "http://ns.adobe.com/xap/1.0/rights/",
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)

HIERARCHY_ROOT = "CSRA"


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


def txt_sidecar_path(image: str) -> Path:
    """``photo.txt``, or ``photo.jpg.txt`` when another image in the folder shares the stem
    (``a.jpg`` and ``a.png`` must not write the same caption file)."""
    p = Path(image)
    try:
        siblings = [s for s in os.listdir(p.parent or ".") if s != p.name and Path(s).stem == p.stem
                    and Path(s).suffix.lower() in IMAGE_EXTENSIONS]
    except OSError:
        siblings = []
    return p.with_name(p.name + ".txt") if siblings else p.with_suffix(".txt")


def write_txt(image: str, tags: list[str]) -> Path:
    path = txt_sidecar_path(image)
    atomic_write_bytes(path, (", ".join(tags) + "\n").encode("utf-8"))
    return path


def xmp_sidecar_path(image: str, naming: str = "full") -> Path:
    p = Path(image)
    return p.with_suffix(".xmp") if naming == "stem" else p.with_name(p.name + ".xmp")


def _bag(parent: ET.Element, prop: str) -> ET.Element:
    """The rdf:Bag of ``prop`` (e.g. dc:subject) under a description, created if missing."""
    el = parent.find(prop)
    if el is None:
        el = ET.SubElement(parent, prop)
    bag = el.find(_q("rdf", "Bag"))
    if bag is None:
        bag = ET.SubElement(el, _q("rdf", "Bag"))
    return bag


def _merge_items(bag: ET.Element, values: list[str]) -> None:
    have = [li.text or "" for li in bag.findall(_q("rdf", "li"))]
    for v in values:
        if v not in have:
            ET.SubElement(bag, _q("rdf", "li")).text = v
            have.append(v)


def merge_xmp(existing: bytes | None, tags: list[str]) -> bytes:
    """Add the tags to dc:subject and lr:hierarchicalSubject (CSRA|tag), keeping everything else."""
    if existing:
        root = ET.fromstring(existing)
        if root.tag == _q("rdf", "RDF"):  # a bare RDF document: wrap it the standard way
            meta = ET.Element(_q("x", "xmpmeta"))
            meta.append(root)
            root = meta
    else:
        root = ET.Element(_q("x", "xmpmeta"))
    rdf = root.find(_q("rdf", "RDF"))
    if rdf is None:
        rdf = ET.SubElement(root, _q("rdf", "RDF"))
    desc = rdf.find(_q("rdf", "Description"))
    if desc is None:
        desc = ET.SubElement(rdf, _q("rdf", "Description"), {_q("rdf", "about"): ""})
    _merge_items(_bag(desc, _q("dc", "subject")), tags)
    _merge_items(_bag(desc, _q("lr", "hierarchicalSubject")), [f"{HIERARCHY_ROOT}|{t}" for t in tags])
    ET.indent(root, space=" ")
    body = ET.tostring(root, encoding="unicode")
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n' + body +
            '\n<?xpacket end="w"?>\n').encode("utf-8")


def write_xmp(image: str, tags: list[str], naming: str = "full") -> Path:
    path = xmp_sidecar_path(image, naming)
    existing = path.read_bytes() if path.exists() else None
    try:
        data = merge_xmp(existing, tags)
    except ET.ParseError as exc:
        raise ValueError(f"{path}: existing XMP is not valid XML ({exc}); left untouched") from exc
    atomic_write_bytes(path, data)
    return path
