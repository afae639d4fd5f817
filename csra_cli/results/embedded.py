"""``--embed``: keywords written inside the image files (JPEG, TIFF, PNG, WebP), where Lightroom,
digiKam and the operating systems' photo tools read them (sidecars are for raw files).

XMP ``dc:subject`` and ``lr:hierarchicalSubject`` are merged exactly as an XMP sidecar is
(``sidecars.merge_xmp``: the user's keywords kept, csra's earlier ones, listed in its
``csra:subjects``, replaced), and IPTC Keywords too where the format has them (JPEG, TIFF).
libexiv2 (the ``exiv2`` package) edits the metadata in memory; the pixels are never re-encoded,
and before anything is written csra checks that the new file's image data is the old one's byte
for byte (JPEG: every segment but the metadata ones and the scan; PNG: every chunk but the text
ones; WebP: every chunk but XMP/EXIF and the VP8X flags; TIFF: the decoded pixels). The new file
is written beside the original, fsynced and renamed onto it with the original's mode (and, with
``keep_mtime``, its mtime): a kill leaves the old file or the new one, never half of one. A file
that cannot be written safely is left byte for byte as it was, with the reason.
"""
from __future__ import annotations

import hashlib
import os
import stat
import struct
from pathlib import Path

from ..fileio import atomic_temp, fsync_dir
from .sidecars import NS, merge_xmp

FORMATS = {"image/jpeg": "JPEG", "image/tiff": "TIFF", "image/png": "PNG", "image/webp": "WebP"}
WITH_IPTC = ("image/jpeg", "image/tiff")
IPTC_KEYWORDS = "Iptc.Application2.Keywords"


class NotEmbedded(ValueError):
    """Why a file was left as it was (one line)."""


def _exiv2():
    try:
        import exiv2
    except ImportError:  # pragma: no cover - a dependency; a broken install says so in one line
        raise NotEmbedded("--embed needs the exiv2 package (pip install exiv2)") from None
    exiv2.LogMsg.setLevel(exiv2.LogMsg.Level.mute)  # problems come back as exceptions, not stderr noise
    return exiv2


def _csra_subjects(packet: bytes | None) -> set[str]:
    """The keywords csra added last time, from an XMP packet's csra:subjects."""
    if not packet or not packet.strip():
        return set()
    from .sidecars import _parse

    try:
        root = _parse(packet)
    except Exception:  # noqa: BLE001 - a packet merge_xmp will refuse anyway
        return set()
    li = f"{{{NS['rdf']}}}li"
    return {el.text or "" for box in root.iter(f"{{{NS['csra']}}}subjects") for el in box.iter(li)}


def keyworded(data: bytes, tags: list[str], hierarchy: list[str] | None = None) -> bytes:
    """The file's bytes with ``tags`` merged into its keywords; NotEmbedded for a format csra
    does not write into, or a file libexiv2 cannot parse."""
    exiv2 = _exiv2()
    try:
        # libexiv2 works in the buffer it is given (no copy of its own): a copy, kept alive here
        # while the image lives, so ``data`` stays the original for the image data check
        buffer = bytearray(data)
        image = exiv2.ImageFactory.open(buffer)
        mime = image.mimeType()
        if mime not in FORMATS:
            raise NotEmbedded(f"{mime or 'unknown format'}: keywords are embedded in JPEG, TIFF, PNG and WebP only")
        image.readMetadata()
        packet = image.xmpPacket().encode("utf-8") or None
        earlier = _csra_subjects(packet)
        try:
            merged = merge_xmp(packet, tags, hierarchy)
        except Exception as exc:  # noqa: BLE001 - the file's own XMP is broken: leave the file alone
            raise NotEmbedded(f"its XMP cannot be read ({str(exc).splitlines()[0][:120]})") from None
        image.setXmpPacket(merged.decode("utf-8"))
        image.writeXmpFromPacket(True)
        if mime in WITH_IPTC:
            _merge_iptc(exiv2, image.iptcData(), tags, earlier)
        image.writeMetadata()
        io = image.io()
        with io.mmap() as view:
            out = bytes(view)
        del image, io, buffer  # the image before the buffer it reads
        return out
    except exiv2.Exiv2Error as exc:
        raise NotEmbedded(f"libexiv2 cannot write it ({str(exc).splitlines()[0][:160]})") from None


def _merge_iptc(exiv2, iptc, tags: list[str], earlier: set[str]) -> None:
    """IPTC Keywords: the user's stay, csra's earlier ones go, the new tags are added (UTF-8)."""
    have = [str(d.value()) for d in iptc if d.key() == IPTC_KEYWORDS]
    users = [k for k in have if k not in earlier]
    wanted = users + [t for t in tags if t not in users]
    if wanted == have:
        return
    while True:
        found = iptc.findKey(exiv2.IptcKey(IPTC_KEYWORDS))
        if found == iptc.end():
            break
        iptc.erase(found)
    for word in wanted:
        datum = exiv2.Iptcdatum(exiv2.IptcKey(IPTC_KEYWORDS))
        datum.setValue(word[:64])  # the IPTC limit for a keyword
        iptc.add(datum)
    if any(not w.isascii() for w in wanted):
        iptc["Iptc.Envelope.CharacterSet"] = "\x1b%G"  # UTF-8


def embed_keywords(path: str, tags: list[str], keep_mtime: bool = False, hierarchy: list[str] | None = None) -> dict:
    """Write ``tags`` into the image file at ``path`` (a symlink: into its target); return the
    file's new fingerprint. NotEmbedded (the file untouched) where it cannot be done safely."""
    target = Path(os.path.realpath(path))
    st = os.stat(target)
    if not stat.S_ISREG(st.st_mode):
        raise NotEmbedded("not a regular file")
    if not st.st_mode & 0o222 or not os.access(target, os.W_OK):
        raise NotEmbedded("read-only; left as it was")
    if st.st_nlink > 1:
        raise NotEmbedded("has other hard links, which a rewritten file would no longer share; left as it was")
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid() and os.geteuid() != 0:
        raise NotEmbedded("belongs to another user; left as it was")
    data = target.read_bytes()
    new = keyworded(data, tags, hierarchy)
    if new != data:
        check_image_data_kept(data, new)
        _replace(target, new, st, keep_mtime)
    after = os.stat(target)
    return {"size": after.st_size, "mtime_ns": after.st_mtime_ns, "sha256": hashlib.sha256(new).hexdigest()}


def _replace(target: Path, new: bytes, st: os.stat_result, keep_mtime: bool) -> None:
    fd, tmp = atomic_temp(target)  # beside it, with its mode
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(new)
            fh.flush()
            os.fsync(fh.fileno())
        if st.st_uid != os.stat(tmp).st_uid:  # root writing a user's photo: it stays theirs
            os.chown(tmp, st.st_uid, st.st_gid)
        if keep_mtime:
            os.utime(tmp, ns=(st.st_atime_ns, st.st_mtime_ns))
        now = os.stat(target)
        if (now.st_size, now.st_mtime_ns, now.st_ino) != (st.st_size, st.st_mtime_ns, st.st_ino):
            raise NotEmbedded("changed while csra wrote its keywords; left as it is now")
        os.replace(tmp, target)
        fsync_dir(target.parent)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- the image data check
def check_image_data_kept(old: bytes, new: bytes) -> None:
    """NotEmbedded unless ``new`` holds ``old``'s image data unchanged (see the module text)."""
    kind = _kind(old)
    same = {"jpeg": lambda: _jpeg_parts(old) == _jpeg_parts(new),
            "png": lambda: _png_parts(old) == _png_parts(new),
            "webp": lambda: _webp_parts(old) == _webp_parts(new)}.get(kind, lambda: _pixels(old) == _pixels(new))
    try:
        ok = same()
    except (ValueError, struct.error, OSError):
        ok = False
    if not ok:
        raise NotEmbedded("libexiv2's output would change the image data; left as it was")


def _kind(data: bytes) -> str:
    if data[:2] == b"\xff\xd8":
        return "jpeg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return "other"


_JPEG_METADATA = {0xE1, 0xED}  # APP1 (Exif, XMP) and APP13 (Photoshop/IPTC)


def _jpeg_parts(data: bytes) -> list[bytes]:
    """Every segment but the metadata ones, and everything from the first scan on."""
    parts, i = [], 2
    while i < len(data):
        if data[i] != 0xFF:
            raise ValueError("not a marker")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker == 0xDA:  # start of scan: the rest is image data
            parts.append(data[i:])
            return parts
        length = struct.unpack(">H", data[i + 2:i + 4])[0]
        if marker not in _JPEG_METADATA:
            parts.append(data[i:i + 2 + length])
        i += 2 + length
    raise ValueError("no scan")


_PNG_METADATA = {b"iTXt", b"tEXt", b"zTXt", b"eXIf"}


def _png_parts(data: bytes) -> list[bytes]:
    parts, i = [], 8
    while i < len(data):
        length = struct.unpack(">I", data[i:i + 4])[0]
        chunk = data[i:i + 12 + length]
        if chunk[4:8] not in _PNG_METADATA:
            parts.append(chunk)
        i += 12 + length
    return parts


def _webp_parts(data: bytes) -> list[bytes]:
    parts, i = [], 12
    while i < len(data):
        fourcc, length = data[i:i + 4], struct.unpack("<I", data[i + 4:i + 8])[0]
        chunk = data[i:i + 8 + length + (length & 1)]
        if fourcc not in (b"VP8X", b"XMP ", b"EXIF"):  # VP8X: flags of which metadata there is (a
            parts.append(chunk)  # simple file gains one with its first XMP)
        i += 8 + length + (length & 1)
    return parts


def _pixels(data: bytes) -> tuple:
    import io

    from PIL import Image

    with Image.open(io.BytesIO(data)) as img:
        frames = []
        for n in range(getattr(img, "n_frames", 1)):
            img.seek(n)
            frames.append((img.mode, img.size, img.tobytes()))
    return tuple(frames)
