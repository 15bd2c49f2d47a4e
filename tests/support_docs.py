"""Markdown as GitHub reads it: fenced code blocks, headings and their anchors."""
import re
import unicodedata

FENCE = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.M | re.S)
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.M)


def slug(heading):
    """GitHub's anchor of a heading: its text lower-cased, without punctuation other than '-' and
    '_', spaces as '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    # HTML tags outside code spans are not text
    text = "".join(part if part.startswith("`") else re.sub(r"<[^>]+>", "", part)
                   for part in re.split(r"(`+[^`]*`+)", text)).lower()
    kept = "".join(c for c in text if c in " -_" or unicodedata.category(c)[0] in "LMN")
    return kept.replace(" ", "-")


def anchors(path):
    """Every heading's anchor in a markdown file; repeated headings get -1, -2, ... as on GitHub."""
    with open(path, encoding="utf-8") as f:
        text = FENCE.sub("", f.read())
    seen, result = {}, set()
    for heading in HEADING.findall(text):
        base = slug(heading)
        count = seen.get(base, 0)
        seen[base] = count + 1
        result.add(base if count == 0 else f"{base}-{count}")
    return result
