"""License normalization to SPDX identifiers (license-expression's SPDX licensing).

`normalize("GPL-2+ or Artistic")` -> ["GPL-2.0-or-later", "Artistic-1.0"]: the license ids an
expression names (exceptions dropped: they are not licenses), so rules can test "license is one
of". Names SPDX does not know are kept as `LicenseRef-<name>`.
"""

from __future__ import annotations

import functools
import re

from license_expression import ExpressionError, Licensing, get_spdx_licensing

# Names seen in Debian copyright files, Python classifiers/metadata and npm, lower-cased.
_ALIASES: dict[str, str] = {
    "expat": "MIT",
    "mit license": "MIT",
    "the mit license": "MIT",
    "mit/x11": "MIT",
    "x11": "X11",
    "apache": "Apache-2.0",
    "apache 2": "Apache-2.0",
    "apache 2.0": "Apache-2.0",
    "apache-2": "Apache-2.0",
    "apache2": "Apache-2.0",
    "apache license 2.0": "Apache-2.0",
    "apache license, version 2.0": "Apache-2.0",
    "apache license version 2.0": "Apache-2.0",
    "apache software license": "Apache-2.0",
    "apache software license 2.0": "Apache-2.0",
    "asl 2.0": "Apache-2.0",
    "bsd": "LicenseRef-BSD",
    "bsd license": "LicenseRef-BSD",
    "new bsd license": "BSD-3-Clause",
    "bsd-3": "BSD-3-Clause",
    "3-clause bsd license": "BSD-3-Clause",
    "bsd-2": "BSD-2-Clause",
    "simplified bsd license": "BSD-2-Clause",
    "isc license": "ISC",
    "isc license (iscl)": "ISC",
    "python software foundation license": "PSF-2.0",
    "psf": "PSF-2.0",
    "psf license": "PSF-2.0",
    "psf-2": "PSF-2.0",
    "python": "Python-2.0",
    "mozilla public license 2.0 (mpl 2.0)": "MPL-2.0",
    "mpl 2.0": "MPL-2.0",
    "zlib": "Zlib",
    "zlib/libpng": "Zlib",
    "the unlicense (unlicense)": "Unlicense",
    "public domain": "LicenseRef-public-domain",
    "public-domain": "LicenseRef-public-domain",
    "artistic": "Artistic-1.0",
    "artistic-1": "Artistic-1.0",
    "artistic-2": "Artistic-2.0",
    "perl": "Artistic-1.0-Perl",
    "gpl": "LicenseRef-GPL",
    "lgpl": "LicenseRef-LGPL",
    "gnu general public license v2 (gplv2)": "GPL-2.0-only",
    "gnu general public license v2 or later (gplv2+)": "GPL-2.0-or-later",
    "gnu general public license v3 (gplv3)": "GPL-3.0-only",
    "gnu general public license v3 or later (gplv3+)": "GPL-3.0-or-later",
    "gnu lesser general public license v2 (lgplv2)": "LGPL-2.0-only",
    "gnu lesser general public license v2 or later (lgplv2+)": "LGPL-2.0-or-later",
    "gnu lesser general public license v3 (lgplv3)": "LGPL-3.0-only",
    "gnu lesser general public license v3 or later (lgplv3+)": "LGPL-3.0-or-later",
    "gnu library or lesser general public license (lgpl)": "LicenseRef-LGPL",
    "gnu affero general public license v3": "AGPL-3.0-only",
    "gnu affero general public license v3 or later (agplv3+)": "AGPL-3.0-or-later",
    "eclipse public license 2.0 (epl-2.0)": "EPL-2.0",
    "historical permission notice and disclaimer (hpnd)": "HPND",
    "cc0 1.0 universal (cc0 1.0) public domain dedication": "CC0-1.0",
}

# Debian short names: GPL-2, GPL-2+, LGPL-2.1+, GFDL-1.3+, AGPL-3 ...
_DEBIAN_GNU = re.compile(
    r"^(a?gpl|lgpl|gfdl)(?:-|v|-v)?(\d(?:\.\d)?)(\+| or later|-or-later)?$", re.IGNORECASE
)
_GNU_FULL = {"1": "1.0", "2": "2.0", "3": "3.0", "2.0": "2.0", "2.1": "2.1", "1.1": "1.1",
             "1.2": "1.2", "1.3": "1.3", "3.0": "3.0", "1.0": "1.0"}

# Python trove classifiers: "License :: OSI Approved :: MIT License".
_CLASSIFIER_PREFIX = "license ::"

_SPLIT = re.compile(
    r"\s*,\s*(?:and\s+|or\s+)?|\s+(?:and\/or|or|and)\s+|\s*[;|]\s*", re.IGNORECASE
)
_WITH = re.compile(r"\s+with\s+.*$", re.IGNORECASE)
_REF_CHARS = re.compile(r"[^A-Za-z0-9.\-]+")


@functools.cache
def _licensing() -> Licensing:
    return get_spdx_licensing()


@functools.cache
def _known_lower() -> dict[str, str]:
    return {k.lower(): k for k in _licensing().known_symbols}


def classifier_license(classifier: str) -> str | None:
    """The SPDX id of a `License :: ...` trove classifier, None when it names no license."""
    if not classifier.lower().startswith(_CLASSIFIER_PREFIX):
        return None
    name = classifier.split("::")[-1].strip()
    if name.lower() in ("osi approved", "other/proprietary license", "freeware"):
        return None
    return _one(name)


def _one(name: str) -> str:
    """One license name (no operators) to an SPDX id or a LicenseRef."""
    raw = name.strip().strip("()").strip()
    low = raw.lower()
    if low in _ALIASES:
        return _ALIASES[low]
    m = _DEBIAN_GNU.match(raw)
    if m:
        family, ver, plus = m.group(1).upper(), m.group(2), m.group(3)
        if family == "GFDL" and ver in ("1", "1.0"):
            ver = "1.1"
        full = _GNU_FULL.get(ver, ver)
        return f"{family}-{full}-{'or-later' if plus else 'only'}"
    known = _known_lower().get(low)
    if known is not None:
        return _canonical(known)
    try:
        parsed = _licensing().parse(raw, validate=False)
        if parsed is not None:
            key = parsed.render()
            if key.lower() in _known_lower() and " " not in key:
                return _canonical(key)
    except ExpressionError:
        pass
    ref = _REF_CHARS.sub("-", raw.replace("+", "-or-later")).strip("-")
    return "LicenseRef-" + (ref or "unknown")


def _canonical(key: str) -> str:
    try:
        return _licensing().parse(key).render()
    except ExpressionError:
        return key


def normalize(raw: str) -> list[str]:
    """License ids named by a license string or expression (deduplicated, in order)."""
    return list(_normalize(" ".join(raw.split())))


@functools.lru_cache(maxsize=8192)
def _normalize(text: str) -> tuple[str, ...]:
    # Package databases repeat the same few hundred license strings: parse each once.
    if not text:
        return ()
    low = text.lower()
    if low in _ALIASES:
        return (_ALIASES[low],)
    names: list[str]
    try:
        parsed = _licensing().parse(text, validate=False)
        names = [] if parsed is None else [
            s.key for s in _licensing().license_symbols(parsed, decompose=True)
            if not getattr(s, "is_exception", False)
        ]
    except (ExpressionError, AttributeError):
        names = [_WITH.sub("", part) for part in _SPLIT.split(text) if part.strip()]
    out: list[str] = []
    for name in names:
        spdx = _one(name)
        if spdx not in out:
            out.append(spdx)
    return tuple(out)


def normalize_all(raws: list[str]) -> tuple[str, ...]:
    """Normalize several license strings into one deduplicated tuple."""
    out: list[str] = []
    for raw in raws:
        for spdx in normalize(raw):
            if spdx not in out:
                out.append(spdx)
    return tuple(out)
