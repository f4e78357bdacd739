"""C syntax highlighting for the trace viewer: each line of a C text as HTML
with `<span class="k|t|n|s|c|p">` around keywords, types, numbers,
strings, comments and preprocessor lines. Done once at generation time, so
the page needs no highlighter of its own; a block comment that spans lines
is carried from one line to the next."""
from __future__ import annotations

import html
import re

KEYWORDS = frozenset("""
    auto break case const continue default do else enum extern for goto if inline register restrict return
    sizeof static struct switch typedef union volatile while _Alignas _Alignof _Atomic _Generic _Noreturn
    _Static_assert _Thread_local __restrict __restrict__ __attribute__ __inline __inline__
""".split())
TYPES = frozenset("""
    void char short int long float double signed unsigned _Bool bool _Float16 _Complex size_t ptrdiff_t
    int8_t int16_t int32_t int64_t uint8_t uint16_t uint32_t uint64_t intptr_t uintptr_t
    __m128 __m128i __m256 __m256i __m512 __m512i __mmask8 __mmask16 __mmask32 __mmask64
""".split())

_TOKEN = re.compile(r"""
    (?P<c>//.*|/\*.*?(?:\*/|$))
  | (?P<s>"(?:\\.|[^"\\])*"?|'(?:\\.|[^'\\])*'?)
  | (?P<n>(?<![\w.])(?:0[xX][0-9a-fA-F]+|(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)[fFuUlL]*(?!\w))
  | (?P<w>[A-Za-z_]\w*)
""", re.VERBOSE)
_PREPROCESSOR = re.compile(r"\s*#")


def _span(cls: str, text: str) -> str:
    return f'<span class="{cls}">{html.escape(text, quote=False)}</span>'


def _word_class(word: str) -> str:
    return "k" if word in KEYWORDS else "t" if word in TYPES else ""


def _code(line: str) -> tuple[str, bool]:
    """One line outside any comment: its HTML, and whether it ends inside a
    block comment it opened."""
    out: list[str] = []
    at = 0
    in_comment = False
    for m in _TOKEN.finditer(line):
        out.append(html.escape(line[at:m.start()], quote=False))
        kind, text = m.lastgroup or "", m.group()
        cls = _word_class(text) if kind == "w" else kind
        out.append(_span(cls, text) if cls else html.escape(text, quote=False))
        in_comment = kind == "c" and text.startswith("/*") and (len(text) < 4 or not text.endswith("*/"))
        at = m.end()
    out.append(html.escape(line[at:], quote=False))
    return "".join(out), in_comment


def highlight_lines(text: str) -> list[str]:
    """Every line of `text` (as `str.splitlines` cuts it) as highlighted HTML."""
    out: list[str] = []
    in_comment = False
    for line in text.splitlines():
        head = ""
        if in_comment:
            end = line.find("*/")
            if end < 0:
                out.append(_span("c", line))
                continue
            head, line, in_comment = _span("c", line[:end + 2]), line[end + 2:], False
        if _PREPROCESSOR.match(line) and not head:
            body = line.lstrip()
            out.append(line[:len(line) - len(body)] + _span("p", body))
            continue
        body, in_comment = _code(line)
        out.append(head + body)
    return out
