#!/usr/bin/env python3
"""Prepare Quantscope's training corpus from the Debian package python3.11-doc.

Runs with the Python standard library only (no torch needed), on any Debian machine:

    apt-get download python3.11-doc            # 3.11.2-6+deb12u9 was used
    dpkg -x python3.11-doc_*_all.deb /tmp/pydoc
    python3 resources/models/train/prepare_corpus.py --src /tmp/pydoc

It reads the reStructuredText sources of the Python documentation
(usr/share/doc/python3.11/html/_sources/**/*.rst.txt), strips the Sphinx markup lightly so
the text reads like the rendered page, and splits it *by document* into three parts:

  train   resources/models/train/corpus-train.txt.xz   trained on
  valid   resources/models/train/corpus-valid.txt.xz   watched during training (checkpoint choice)
  heldout resources/eval/heldout.txt                   never used by training in any way

The split depends only on the documents' paths (SHA-256 order) and lengths, so re-running
gives the same files byte for byte. Documents inside the .xz files are separated by a line holding only
DOC_SEPARATOR; the held-out documents are joined with one blank line.
"""
from __future__ import annotations

import argparse
import hashlib
import lzma
import re
import shutil
from pathlib import Path

DOC_SEPARATOR = "\x1e"  # ASCII record separator: never occurs in the sources (checked).
SOURCES = Path("usr/share/doc/python3.11/html/_sources")
COPYRIGHT = Path("usr/share/doc/python3.11-doc/copyright")
# Legal boilerplate and pure tables of contents carry no prose worth learning.
SKIP = {"license.rst.txt", "copyright.rst.txt", "contents.rst.txt", "whatsnew/changelog.rst.txt"}
HELDOUT_FRACTION = 0.04
VALID_FRACTION = 0.02

# Directives whose whole block (directive line, options, indented body) is dropped.
DROP_BLOCK = {
    "index", "sectionauthor", "moduleauthor", "highlight", "toctree", "include",
    "literalinclude", "currentmodule", "tabularcolumns", "testsetup", "testcleanup",
    "only", "raw", "audit-event-table", "program", "module",
}
# Admonitions: the directive becomes a short English lead-in; the body stays.
ADMONITION = {
    "note": "Note:", "warning": "Warning:", "seealso": "See also:", "important": "Important:",
    "caution": "Caution:", "tip": "Tip:", "attention": "Attention:", "hint": "Hint:",
    "danger": "Danger:", "impl-detail": "CPython implementation detail:",
}
VERSION_NOTE = {
    "versionadded": "New in version {}.", "versionchanged": "Changed in version {}:",
    "deprecated": "Deprecated since version {}:",
    "deprecated-removed": "Deprecated since version {}, will be removed in version {}:",
}
# Object descriptions (function, class, c:function, ...) keep their signature text.
SIGNATURE = re.compile(
    r"^(?:c:|py:)?(?:function|method|data|class|attribute|exception|member|type|var|macro|"
    r"decorator|decoratormethod|classmethod|staticmethod|abstractmethod|coroutinefunction|"
    r"coroutinemethod|opcode|cmdoption|option|envvar|describe|object|pdbcommand|"
    r"awaitablefunction|awaitablemethod|enumerator|struct|union|enum)$"
)

DIRECTIVE = re.compile(r"^(\s*)\.\. ([A-Za-z][\w:-]*)::\s?(.*)$")
TARGET_OR_COMMENT = re.compile(r"^(\s*)\.\.(\s|$)")
OPTION = re.compile(r"^\s+:[\w-]+:(\s.*)?$")
UNDERLINE = re.compile(r"""^([=\-~^"'`#*+<>_.:])\1{2,}\s*$""")
ROLE = re.compile(r":(?:[a-z]+:)?[A-Za-z][\w-]*:`([^`]+)`")
LINK = re.compile(r"`([^`<]+?)\s*<[^`>]+>`__?")
REF_LINK = re.compile(r"`([^`]+)`__?")
LITERAL = re.compile(r"``(.+?)``", re.S)
# rst's "\ " (backslash space) joins markup to a word; other escapes are left alone because
# code examples use backslashes literally.
JOIN_ESCAPE = re.compile(r"(?<=\S)\\ ")
FOOTNOTE = re.compile(r"\s*\[(?:#[\w-]*|\d+)\]_")


def role_text(match: re.Match[str]) -> str:
    """What Sphinx shows for a role: the title of `title <target>`, or the last dotted part
    for ~targets, with the leading ! (no-link marker) removed."""
    text = match.group(1)
    titled = re.match(r"^(.*?)\s*<[^<>]+>$", text, re.S)
    if titled and titled.group(1):
        return titled.group(1)
    text = text.lstrip("!")
    if text.startswith("~"):
        text = text[1:].split(".")[-1]
    return text


def clean_inline(line: str) -> str:
    line = ROLE.sub(role_text, line)
    line = LINK.sub(r"\1", line)
    line = REF_LINK.sub(r"\1", line)
    line = LITERAL.sub(r"\1", line)
    line = FOOTNOTE.sub("", line)
    line = JOIN_ESCAPE.sub("", line)
    return line


def indent_of(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def skip_block(lines: list[str], i: int, indent: int) -> int:
    """Index of the first line after the body of a block opened at `indent`: the body is
    every following line that is blank or indented deeper, blank lines included."""
    while i < len(lines) and (not lines[i].strip() or indent_of(lines[i]) > indent):
        nxt = i + 1
        if not lines[i].strip() and nxt < len(lines) and lines[nxt].strip() \
                and indent_of(lines[nxt]) <= indent:
            return nxt
        i = nxt
    return i


def clean_rst(text: str) -> str:
    lines = text.replace("\t", "    ").splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        m = DIRECTIVE.match(line)
        if m:
            indent, name, arg = len(m.group(1)), m.group(2), m.group(3).strip()
            i += 1
            # Option lines (:synopsis: ..., :noindex:) directly under the directive.
            while i < len(lines) and OPTION.match(lines[i]) and indent_of(lines[i]) > indent:
                i += 1
            if name in DROP_BLOCK:
                i = skip_block(lines, i, indent)
                continue
            pad = " " * indent
            if name in ADMONITION:
                out.append(pad + ADMONITION[name] + (" " + clean_inline(arg) if arg else ""))
            elif name in VERSION_NOTE:
                if name == "deprecated-removed":
                    parts = re.split(r"[,\s]+", arg, maxsplit=2)
                    parts, rest = parts[:2], " ".join(parts[2:])
                else:
                    parts = arg.split(" ", 1)
                    parts, rest = parts[:1], " ".join(parts[1:])
                template = VERSION_NOTE[name]
                enough = len(parts) == template.count("{}") and all(parts)
                lead = template.format(*parts) if enough else ""
                out.append(pad + (lead + " " + clean_inline(rest)).strip())
            elif SIGNATURE.match(name):
                if arg:
                    out.append(pad + clean_inline(arg))
            elif arg and name in {"rubric", "topic", "sidebar"}:
                out.append(pad + clean_inline(arg))
            # Any other directive (code-block, doctest, productionlist, ...): drop the
            # directive line itself, keep its indented body as text.
            continue
        if TARGET_OR_COMMENT.match(line):
            # Link targets (.. _label:) and comments, with their indented body.
            i = skip_block(lines, i + 1, indent_of(line))
            continue
        if UNDERLINE.match(line):
            i += 1
            continue
        out.append(line)
        i += 1
    # Inline markup is cleaned on the whole text because roles and links wrap across lines.
    text = clean_inline("\n".join(out))
    text = re.sub(r"\n[ \t]*\n(?:[ \t]*\n)+", "\n\n", text)  # at most one blank line
    return text.strip() + "\n"


def assign_splits(cleaned: list[tuple[str, str]]) -> dict[str, list[tuple[str, str]]]:
    """Deterministic split by document: documents in SHA-256 order of their path fill the
    held-out part until it holds HELDOUT_FRACTION of all characters, then the validation
    part likewise; the rest is training text. Each part is then kept in path order."""
    total = sum(len(t) for _, t in cleaned)
    order = sorted(cleaned, key=lambda d: hashlib.sha256(d[0].encode()).hexdigest())
    parts: dict[str, list[tuple[str, str]]] = {"train": [], "valid": [], "heldout": []}
    filled = {"heldout": 0, "valid": 0}
    for rel, text in order:
        if filled["heldout"] < HELDOUT_FRACTION * total:
            split = "heldout"
        elif filled["valid"] < VALID_FRACTION * total:
            split = "valid"
        else:
            split = "train"
        if split in filled:
            filled[split] += len(text)
        parts[split].append((rel, text))
    return {k: sorted(v) for k, v in parts.items()}


def main() -> None:
    here = Path(__file__).resolve().parent
    repo = here.parents[2]
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", required=True, type=Path, help="folder python3.11-doc was dpkg -x'ed into")
    args = ap.parse_args()

    root = args.src / SOURCES
    cleaned: list[tuple[str, str]] = []
    for path in sorted(root.rglob("*.rst.txt")):
        rel = path.relative_to(root).as_posix()
        if rel in SKIP:
            continue
        raw = path.read_text(encoding="utf-8")
        assert DOC_SEPARATOR not in raw, rel
        text = clean_rst(raw)
        if len(text) < 200:  # index pages that were only toctrees
            continue
        cleaned.append((rel, text))
    docs = assign_splits(cleaned)

    def write_xz(name: str, items: list[tuple[str, str]]) -> None:
        body = f"\n{DOC_SEPARATOR}\n".join(t for _, t in items)
        # preset 9 | extreme: deterministic output, smallest file.
        (here / name).write_bytes(lzma.compress(body.encode(), preset=9 | lzma.PRESET_EXTREME))

    write_xz("corpus-train.txt.xz", docs["train"])
    write_xz("corpus-valid.txt.xz", docs["valid"])
    eval_dir = repo / "resources" / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / "heldout.txt").write_text("\n".join(t for _, t in docs["heldout"]), encoding="utf-8")
    shutil.copyfile(args.src / COPYRIGHT, here / "CORPUS-COPYRIGHT.txt")

    manifest = []
    for split in ("train", "valid", "heldout"):
        chars = sum(len(t) for _, t in docs[split])
        print(f"{split:8s} {len(docs[split]):4d} documents {chars:9d} characters")
        manifest += [f"{split}\t{rel}\t{len(t)}" for rel, t in docs[split]]
    (here / "corpus-manifest.tsv").write_text("split\tdocument\tcharacters\n" + "\n".join(manifest) + "\n")


if __name__ == "__main__":
    main()
