"""Make strings from data or a cache safe to show: city, object and file names are untrusted.

City names come from folder names or a CSV manifest, object names from ``classes.json``, paths
from a user's disk. Shown through ``st.markdown`` they could render links, images (which every
viewer's browser would fetch), bold text or Streamlit's ``:color[...]`` directives; in HTML they
could inject tags. Every string that comes from data passes through one of these functions on its
way to the screen.
"""

from __future__ import annotations

import html
import re

import pandas as pd

# CommonMark's ASCII punctuation that can start markup, plus Streamlit's ':' directives
# (``:red[...]``, ``:material/icon:``) and '$' (LaTeX).
_MD_SPECIAL = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$&\"'=])")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")
# GFM "autolink literals" (http://…, https://…, www.…, name@host.tld) are found in the parsed
# text, after backslash escapes are resolved, so escaping cannot stop them: an invisible WORD
# JOINER (U+2060) placed inside each trigger does.
_AUTOLINK = re.compile(r"(?i)(?<=http:)(?=//)|(?<=https:)(?=//)|(?<=www)(?=\.)|(?=@)")
WORD_JOINER = "\u2060"


def md_escape(text: object) -> str:
    """``text`` as literal Markdown: every markup character backslash-escaped, newlines to spaces.

    Safe inside ``st.markdown``, ``st.caption``, ``st.info``/``st.error``, widget labels and help
    texts. Control characters are dropped. URLs and e-mail addresses stay plain text: an
    invisible U+2060 (word joiner) after ``http:``/``https:``/``www`` and before ``@`` keeps
    GitHub-flavoured Markdown from turning them into links.
    """
    s = _CONTROL.sub("", str(text)).replace("\r", " ").replace("\n", " ")
    s = _AUTOLINK.sub(WORD_JOINER, s)
    return _MD_SPECIAL.sub(r"\\\1", s)


def html_escape(text: object) -> str:
    """``text`` as literal HTML (for ``unsafe_allow_html`` blocks, Plotly hover templates and
    component payloads shown through ``innerHTML``); control characters are dropped."""
    return html.escape(_CONTROL.sub("", str(text)), quote=True)


# A cell starting with one of these is run as a formula by spreadsheet programs (OWASP, "CSV
# Injection"): =HYPERLINK(...) can send data away, =cmd|... could run programs.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def csv_safe(frame: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``frame`` whose text cells cannot run as spreadsheet formulas: a leading
    ``= + - @``, tab or carriage return gets a ``'`` in front (OWASP's advice). Numbers are kept."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(
                lambda v: "'" + v if isinstance(v, str) and v.startswith(_FORMULA_START) else v
            )
    out.columns = [
        "'" + c if isinstance(c, str) and c.startswith(_FORMULA_START) else c for c in out.columns
    ]
    return out
