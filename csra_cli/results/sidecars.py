"""Sidecar files beside each image: ``.txt`` captions and ``.xmp`` keyword metadata.

Nothing of the user's is lost: a sidecar never lands on an input file (``scan.txt`` that is
really a JPEG), a ``.txt`` that csra did not write is kept unless ``--overwrite-sidecars``
(csra notes the files it wrote, with their sha256, in ``.csra-sidecars.jsonl`` in each folder,
one JSON object a line, so no file name can forge an entry; an edited caption counts as the
user's), and an existing XMP is merged into: the user's keywords stay, csra's own are replaced
by the new ones. csra knows its own keywords exactly: the ``CSRA|…`` hierarchy entries, and the
``dc:subject`` entries it added, listed in its ``csra:subjects`` property; a keyword the user had
before csra gave the same tag stays the user's.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
import re
import xml.etree.ElementTree as ET
from pathlib import Path

from ..fileio import atomic_write_bytes, open_own
from ..data.inputs import IMAGE_EXTENSIONS, looks_like_image

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
    "csra": "http://csra.invalid/ns/xmp/1.0/",  # csra's own record of the keywords it added
}
for _prefix, _uri in NS.items():
    ET.register_namespace(_prefix, _uri)

HIERARCHY_ROOT = "CSRA"


def _q(prefix: str, name: str) -> str:
    return f"{{{NS[prefix]}}}{name}"


def sidecar_path(image: str, ext: str, naming: str = "stem") -> Path:
    """``photo.EXT`` (naming "stem"), or ``photo.jpg.EXT`` (naming "full", or when another image in
    the folder shares the stem, or when ``photo.EXT`` would be the image itself or another image)."""
    p = Path(image)
    full = p.with_name(p.name + ext)
    stem = p.with_suffix(ext)
    if naming == "full" or stem.name == p.name:
        return full
    try:
        siblings = [s for s in os.listdir(p.parent or ".") if s != p.name and Path(s).stem == p.stem
                    and Path(s).suffix.lower() in IMAGE_EXTENSIONS]
    except OSError:
        siblings = []
    if siblings or (stem.is_file() and looks_like_image(str(stem))):
        return full
    return stem


def txt_sidecar_path(image: str) -> Path:
    return sidecar_path(image, ".txt")


def xmp_sidecar_path(image: str, naming: str = "full") -> Path:
    return sidecar_path(image, ".xmp", naming)


# Per folder: {"name": …, "sha256": …} of each .txt csra wrote, a JSON object a line (JSON escapes
# a newline in a name, so a name cannot start a line of its own). The older ".csra-sidecars" in
# "sha256  name" lines could be forged by such a name and is not read: its captions count as the user's.
MANIFEST = ".csra-sidecars.jsonl"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class CaptionStyle:
    """How a .txt caption is written (the kohya/wd14 conventions dataset builders expect): the
    tags joined by ``separator``, fixed tags before and after them (each once), the file's
    ``extension``, and beside the image or in a tree under ``folder`` that mirrors the inputs
    (``roots``: the input folders, whose insides it mirrors)."""

    separator: str = ", "
    extension: str = ".txt"
    prepend: tuple[str, ...] = ()
    append: tuple[str, ...] = ()
    folder: Path | None = None
    roots: tuple[str, ...] = ()

    def text(self, tags: list[str]) -> str:
        fixed = set(self.prepend) | set(self.append)
        words = list(dict.fromkeys([*self.prepend, *(t for t in tags if t not in fixed), *self.append]))
        return self.separator.join(words) + "\n"

    def path_for(self, image: str) -> Path:
        beside = sidecar_path(image, self.extension)
        if self.folder is None:
            return beside
        return self.folder / mirrored(image, self.roots).parent / beside.name


def mirrored(image: str, roots: tuple[str, ...]) -> Path:
    """An image's place in a mirrored tree: below the input folder it was found in (one input
    folder: its inside; several: each under its own name, so 2023/a.jpg and 2024/a.jpg stay two),
    else below the working folder, else its absolute path without the leading /."""
    here = os.path.abspath(image)
    folders = sorted({os.path.abspath(r) for r in roots}, key=len, reverse=True)
    for root in folders:
        if here.startswith(root.rstrip(os.sep) + os.sep):
            return Path(os.path.relpath(here, root if len(folders) == 1 else os.path.dirname(root)))
    cwd = os.getcwd()
    if here.startswith(cwd.rstrip(os.sep) + os.sep):
        return Path(os.path.relpath(here, cwd))
    return Path(here.lstrip(os.sep))


class SidecarWriter:
    """Writes the sidecars of one run (``kinds``: txt, xmp) and knows which .txt files are csra's."""

    def __init__(self, kinds, xmp_naming: str = "full", overwrite: bool = False, captions: CaptionStyle | None = None):
        self.kinds, self.xmp_naming, self.overwrite = list(kinds), xmp_naming, overwrite
        self.captions = captions or CaptionStyle()
        self._written: dict[Path, dict[str, str]] = {}  # folder -> name -> sha256 csra wrote
        self._this_run: dict[Path, str] = {}  # caption -> the image it was written for

    def write(self, image: str, tags: list[str], hierarchy: list[str] | None = None) -> list[str]:
        """Write every sidecar of one image (``hierarchy``: its XMP keyword paths, see
        keyword_hierarchy); the problems, one line each (never raises)."""
        problems = []
        for kind in self.kinds:
            try:
                if kind == "txt":
                    self.write_txt(image, tags)
                else:
                    write_xmp(image, tags, self.xmp_naming, hierarchy)
            except (OSError, ValueError) as exc:
                problems.append(f"{kind} sidecar not written ({exc})")
        return problems

    def written(self, folder: Path) -> dict[str, str]:
        if folder not in self._written:
            table: dict[str, str] = {}
            try:
                with os.fdopen(open_own(folder / MANIFEST, os.O_RDONLY), encoding="utf-8") as fh:
                    for line in fh:
                        try:
                            entry = json.loads(line)
                        except ValueError:  # a line cut by a kill
                            continue
                        if (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                                and isinstance(entry.get("sha256"), str)):
                            table[entry["name"]] = entry["sha256"]
            except (OSError, UnicodeDecodeError):
                pass
            self._written[folder] = table
        return self._written[folder]

    def paths(self, image: str) -> list[Path]:
        """The sidecar files this run writes for an image (for --dry-run)."""
        return [self.captions.path_for(image) if k == "txt" else xmp_sidecar_path(image, self.xmp_naming)
                for k in self.kinds]

    def write_txt(self, image: str, tags: list[str]) -> Path:
        path = self.captions.path_for(image)
        data = self.captions.text(tags).encode("utf-8")
        if path in self._this_run:  # two images, one caption file (a flattened tree): never silently
            raise ValueError(f"{path} is already the caption of {self._this_run[path]} in this run")
        folder = path.parent
        mine = self.written(folder)
        if path.exists():
            if looks_like_image(str(path)):
                raise ValueError(f"{path} is an image; a sidecar never replaces one")
            if not self.overwrite and mine.get(path.name) != _sha256(path.read_bytes()):
                raise ValueError(f"{path} exists and csra did not write it; --overwrite-sidecars replaces it")
        digest = _sha256(data)
        folder.mkdir(parents=True, exist_ok=True)
        # the manifest first: a caption csra cannot note would count as the user's next time
        note = None if mine.get(path.name) == digest else os.fdopen(
            open_own(folder / MANIFEST, os.O_WRONLY | os.O_APPEND | os.O_CREAT), "w", encoding="utf-8")
        try:
            atomic_write_bytes(path, data)
            if note is not None:
                note.write(json.dumps({"name": path.name, "sha256": digest}) + "\n")
                mine[path.name] = digest
        finally:
            if note is not None:
                note.close()
        self._this_run[path] = image
        return path


def write_txt(image: str, tags: list[str], overwrite: bool = False) -> Path:
    return SidecarWriter(["txt"], overwrite=overwrite).write_txt(image, tags)


_DTD = re.compile(rb"<!DOCTYPE|<!ENTITY", re.IGNORECASE)
_CONTAINERS = ("Bag", "Seq", "Alt")


def _parse(existing: bytes) -> ET.Element:
    """The XMP's root element, comments kept; a DTD (entity expansion, external entities) is refused."""
    if _DTD.search(existing):
        raise ValueError("has a DTD (<!DOCTYPE>/<!ENTITY>), which XMP never needs; left untouched")
    parser = ET.XMLParser(target=ET.TreeBuilder(insert_comments=True, insert_pis=True))
    parser.feed(existing)
    return parser.close()


def _container(descs: list[ET.Element], prop: str) -> ET.Element:
    """The rdf:Bag/Seq/Alt of ``prop`` (dc:subject, lr:hierarchicalSubject) in whichever
    description holds it; a new Bag in the first description if none does."""
    for desc in descs:
        el = desc.find(prop)
        if el is not None:
            for kind in _CONTAINERS:
                box = el.find(_q("rdf", kind))
                if box is not None:
                    return box
            text = (el.text or "").strip()  # a single value written as text: make it a Bag
            el.text = None
            box = ET.SubElement(el, _q("rdf", "Bag"))
            if text:
                ET.SubElement(box, _q("rdf", "li")).text = text
            return box
    return ET.SubElement(ET.SubElement(descs[0], prop), _q("rdf", "Bag"))


def _items(box: ET.Element) -> list[ET.Element]:
    return box.findall(_q("rdf", "li"))


def keyword_hierarchy(fine: list[str], broader: dict[str, list[str]] | None, keywords: str = "both"
                      ) -> list[str] | None:
    """lr:hierarchicalSubject entries of an image's fine tags, broadest first, "|"-separated
    ("animal|dog|golden retriever"; with --keywords broad without the fine name, which a keyword
    tree would assign too: "animal|dog"), each once; None where the model has no broader terms
    (then CSRA|tag)."""
    if not broader:
        return None
    paths = []
    for t in fine:
        up = broader.get(t, [])
        if keywords == "broad":
            paths.append("|".join(up) if up else "")
        else:
            paths.append("|".join([*up, t]) if up else f"{HIERARCHY_ROOT}|{t}")
    return list(dict.fromkeys(p for p in paths if p))


def _has_container(descs: list[ET.Element], prop: str) -> bool:
    return any(desc.find(prop) is not None for desc in descs)


def merge_xmp(existing: bytes | None, tags: list[str], hierarchy: list[str] | None = None) -> bytes:
    """Put the tags in dc:subject and lr:hierarchicalSubject (``hierarchy``, else CSRA|tag): the
    user's keywords and everything else stay, csra's earlier keywords (its CSRA|... entries, the
    hierarchy entries its csra:hierarchy lists, and the dc:subject entries its csra:subjects
    lists) are replaced. An XMP of an older csra lists none: its plain keywords are all kept,
    since csra cannot tell them from the user's."""
    if existing and existing.strip():
        root = _parse(existing)
        if root.tag == _q("rdf", "RDF"):  # a bare RDF document: wrap it the standard way
            meta = ET.Element(_q("x", "xmpmeta"))
            meta.append(root)
            root = meta
    else:
        root = ET.Element(_q("x", "xmpmeta"))
    rdf = root if root.tag == _q("rdf", "RDF") else root.find(_q("rdf", "RDF"))
    if rdf is None:
        rdf = ET.SubElement(root, _q("rdf", "RDF"))
    descs = rdf.findall(_q("rdf", "Description"))
    if not descs:
        descs = [ET.SubElement(rdf, _q("rdf", "Description"), {_q("rdf", "about"): ""})]
    hier = _container(descs, _q("lr", "hierarchicalSubject"))
    subject = _container(descs, _q("dc", "subject"))
    added = _container(descs, _q("csra", "subjects"))
    prefix = HIERARCHY_ROOT + "|"
    paths = [prefix + t for t in tags] if hierarchy is None else list(hierarchy)
    # csra's own hierarchy entries outside CSRA|: listed, so that a later run replaces them
    listed = (_container(descs, _q("csra", "hierarchy"))
              if _has_container(descs, _q("csra", "hierarchy")) or any(not h.startswith(prefix) for h in paths) else None)
    ours = {li.text or "" for li in _items(added)}
    ours_h = {li.text or "" for li in _items(listed)} if listed is not None else set()
    boxes = [(hier, lambda t: t.startswith(prefix) or t in ours_h), (subject, lambda t: t in ours), (added, lambda t: True)]
    for box, is_csra in boxes + ([(listed, lambda t: True)] if listed is not None else []):
        for li in _items(box):
            if is_csra(li.text or ""):
                box.remove(li)
    users = {li.text or "" for li in _items(subject)}
    users_h = {li.text or "" for li in _items(hier)}
    extra = [(listed, [h for h in paths if not h.startswith(prefix) and h not in users_h])] if listed is not None else []
    for box, values in [(subject, tags), (hier, paths), (added, [t for t in tags if t not in users])] + extra:
        have = {li.text or "" for li in _items(box)}
        for v in values:
            if v not in have:
                ET.SubElement(box, _q("rdf", "li")).text = v
                have.add(v)
    ET.indent(root, space=" ")
    body = ET.tostring(root, encoding="unicode")
    return ('<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n' + body +
            '\n<?xpacket end="w"?>\n').encode("utf-8")


def write_xmp(image: str, tags: list[str], naming: str = "full", hierarchy: list[str] | None = None) -> Path:
    path = xmp_sidecar_path(image, naming)
    existing = path.read_bytes() if path.exists() else None
    if existing is not None and looks_like_image(str(path)):
        raise ValueError(f"{path} is an image; a sidecar never replaces one")
    try:
        data = merge_xmp(existing, tags, hierarchy)
    except ET.ParseError as exc:
        raise ValueError(f"{path}: existing XMP is not valid XML ({exc}); left untouched") from exc
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from exc
    atomic_write_bytes(path, data)
    return path
