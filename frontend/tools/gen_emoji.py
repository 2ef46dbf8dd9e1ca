"""Writes frontend/img/emoji/*.svg, the 24 emoji behind the seed's [name] codes.

Run once after editing (python frontend/tools/gen_emoji.py); the SVGs are
committed, so serving the front end needs no build step. The code -> file
table must match EMOJI in frontend/js/emoji.js.
"""
from __future__ import annotations

from pathlib import Path

OUT = Path(__file__).resolve().parent.parent / "img" / "emoji"
INK = "#5b3a1a"
FACE = '<circle cx="32" cy="32" r="28" fill="{fill}" stroke="#e0a526" stroke-width="2"/>'

DOT_EYES = f'<circle cx="22" cy="26" r="3.5" fill="{INK}"/><circle cx="42" cy="26" r="3.5" fill="{INK}"/>'
HAPPY_EYES = (f'<path d="M16 28 q6 -8 12 0" fill="none" stroke="{INK}" stroke-width="3" stroke-linecap="round"/>'
              f'<path d="M36 28 q6 -8 12 0" fill="none" stroke="{INK}" stroke-width="3" stroke-linecap="round"/>')
CLOSED_EYES = (f'<path d="M16 27 q6 5 12 0" fill="none" stroke="{INK}" stroke-width="3" stroke-linecap="round"/>'
               f'<path d="M36 27 q6 5 12 0" fill="none" stroke="{INK}" stroke-width="3" stroke-linecap="round"/>')
SMILE = f'<path d="M20 38 q12 12 24 0" fill="none" stroke="{INK}" stroke-width="3" stroke-linecap="round"/>'
SMALL_SMILE = f'<path d="M25 40 q7 6 14 0" fill="none" stroke="{INK}" stroke-width="3" stroke-linecap="round"/>'
FROWN = f'<path d="M22 46 q10 -9 20 0" fill="none" stroke="{INK}" stroke-width="3" stroke-linecap="round"/>'
FLAT = f'<path d="M24 43 h16" stroke="{INK}" stroke-width="3" stroke-linecap="round"/>'
OPEN_MOUTH = ('<path d="M18 36 h28 q0 16 -14 16 q-14 0 -14 -16 z" fill="#7a2e1c"/>'
              '<path d="M24 47 q8 -6 16 0 q-8 6 -16 0 z" fill="#f07a7a"/>')
BLUSH = '<circle cx="16" cy="36" r="4" fill="#f59b9b" opacity=".7"/><circle cx="48" cy="36" r="4" fill="#f59b9b" opacity=".7"/>'
TEAR = '<path d="M44 30 q4 7 0 10 q-4 -3 0 -10 z" fill="#5dade2"/>'


def heart(cx: float, cy: float, s: float, fill: str = "#e74c3c") -> str:
    return (f'<path transform="translate({cx} {cy}) scale({s})" fill="{fill}" '
            'd="M0 6 C-8 0 -8 -7 -4 -8 C-2 -9 0 -7 0 -5 C0 -7 2 -9 4 -8 C8 -7 8 0 0 6 z"/>')


def face(*parts: str, fill: str = "#ffcc4d") -> str:
    return FACE.format(fill=fill) + "".join(parts)


EMOJI = {
    "weixiao": face(DOT_EYES, SMILE),
    "daxiao": face(HAPPY_EYES, OPEN_MOUTH),
    "touxiao": face(HAPPY_EYES, BLUSH, f'<path d="M28 41 q8 6 14 -2" fill="none" stroke="{INK}" stroke-width="3" stroke-linecap="round"/>'),
    "ciya": face(DOT_EYES, '<rect x="18" y="36" width="28" height="12" rx="5" fill="#fff" stroke="#5b3a1a" stroke-width="2.5"/>'
                           f'<path d="M18 42 h28 M25 36 v12 M32 36 v12 M39 36 v12" stroke="{INK}" stroke-width="1.5"/>'),
    "tiaopi": face(f'<circle cx="22" cy="26" r="3.5" fill="{INK}"/>',
                   f'<path d="M36 27 q6 -6 12 0" fill="none" stroke="{INK}" stroke-width="3" stroke-linecap="round"/>',
                   SMILE, '<path d="M30 43 h10 v6 q-5 6 -10 0 z" fill="#f07a7a"/>'),
    "haixiu": face(f'<circle cx="22" cy="29" r="3" fill="{INK}"/><circle cx="42" cy="29" r="3" fill="{INK}"/>', BLUSH, SMALL_SMILE),
    "se": face(heart(22, 26, 1.1), heart(42, 26, 1.1), SMILE),
    "deyi": face(f'<path d="M16 19 l10 -3 M38 16 l10 3" stroke="{INK}" stroke-width="2.5" stroke-linecap="round"/>', DOT_EYES,
                 f'<path d="M22 42 q12 6 22 -4" fill="none" stroke="{INK}" stroke-width="3" stroke-linecap="round"/>'),
    "ku": face('<path d="M12 22 h40 v4 q0 9 -9 9 h-3 q-6 0 -7 -7 h-2 q-1 7 -7 7 h-3 q-9 0 -9 -9 z" fill="#222"/>', SMILE),
    "fadai": face('<circle cx="22" cy="26" r="7" fill="#fff" stroke="#5b3a1a" stroke-width="2"/>'
                  '<circle cx="42" cy="26" r="7" fill="#fff" stroke="#5b3a1a" stroke-width="2"/>'
                  f'<circle cx="22" cy="26" r="2" fill="{INK}"/><circle cx="42" cy="26" r="2" fill="{INK}"/>', FLAT),
    "yiwen": face(DOT_EYES, FLAT, '<text x="44" y="20" font-size="20" font-weight="bold" fill="#2e86de" font-family="sans-serif">?</text>'),
    "jingya": face(f'<path d="M15 17 q6 -4 12 0 M37 17 q6 -4 12 0" fill="none" stroke="{INK}" stroke-width="2.5" stroke-linecap="round"/>',
                   f'<circle cx="22" cy="27" r="4.5" fill="{INK}"/><circle cx="42" cy="27" r="4.5" fill="{INK}"/>',
                   '<ellipse cx="32" cy="44" rx="6" ry="7" fill="#7a2e1c"/>'),
    "liulei": face(DOT_EYES, TEAR, FROWN),
    "daku": face(CLOSED_EYES, '<path d="M18 30 v20 M46 30 v20" stroke="#5dade2" stroke-width="4" stroke-linecap="round"/>',
                 '<path d="M22 48 q10 -14 20 0 z" fill="#7a2e1c"/>'),
    "nanguo": face(f'<path d="M15 20 l10 4 M49 20 l-10 4" stroke="{INK}" stroke-width="2.5" stroke-linecap="round"/>', DOT_EYES, FROWN),
    "fanu": face(f'<path d="M14 18 l12 6 M50 18 l-12 6" stroke="{INK}" stroke-width="3" stroke-linecap="round"/>', DOT_EYES, FROWN,
                 fill="#f4775c"),
    "ganga": face(DOT_EYES, f'<path d="M22 44 q3 -3 6 0 q3 3 6 0 q3 -3 6 0" fill="none" stroke="{INK}" stroke-width="3" stroke-linecap="round"/>',
                  '<path d="M50 12 q5 8 0 12 q-5 -4 0 -12 z" fill="#5dade2"/>'),
    "shui": face(f'<path d="M16 28 h10 M38 28 h10" stroke="{INK}" stroke-width="3" stroke-linecap="round"/>',
                 '<ellipse cx="32" cy="44" rx="4" ry="3" fill="#7a2e1c"/>',
                 '<text x="42" y="18" font-size="14" font-weight="bold" fill="#2e86de" font-family="sans-serif">z</text>'
                 '<text x="50" y="10" font-size="10" font-weight="bold" fill="#2e86de" font-family="sans-serif">z</text>'),
    "aixin": heart(32, 34, 3.6),
    "xinsui": heart(32, 34, 3.6) + '<path d="M32 10 l-4 10 l7 6 l-6 8 l5 8 l-2 14" fill="none" stroke="#fff" stroke-width="3" stroke-linejoin="round"/>',
    "meigui": ('<path d="M32 34 q-2 14 2 26" fill="none" stroke="#27ae60" stroke-width="4" stroke-linecap="round"/>'
               '<path d="M33 48 q10 -8 16 -2 q-8 6 -16 2 z" fill="#2ecc71"/>'
               '<circle cx="32" cy="22" r="15" fill="#e74c3c"/>'
               '<path d="M24 20 q8 -10 16 0 q-8 8 -16 0 z M27 25 q5 5 10 0" fill="none" stroke="#a93226" stroke-width="2.5"/>'),
    "kafei": ('<path d="M12 28 h34 v14 q0 12 -12 12 h-10 q-12 0 -12 -12 z" fill="#fff" stroke="#8e5b3a" stroke-width="3"/>'
              '<path d="M46 32 h4 q6 0 6 6 q0 6 -6 6 h-4" fill="none" stroke="#8e5b3a" stroke-width="3"/>'
              '<path d="M15 32 h28" stroke="#6f3f1f" stroke-width="5"/>'
              '<path d="M22 10 q4 4 0 8 q-4 4 0 8 M32 8 q4 4 0 8 q-4 4 0 8" fill="none" stroke="#bbb" stroke-width="2.5" stroke-linecap="round"/>'),
    "liwu": ('<rect x="10" y="26" width="44" height="30" rx="3" fill="#e74c3c"/>'
             '<rect x="7" y="18" width="50" height="10" rx="3" fill="#c0392b"/>'
             '<path d="M32 18 v38" stroke="#f1c40f" stroke-width="6"/>'
             '<path d="M32 18 q-14 -14 -16 -2 q0 4 16 2 q14 -14 16 -2 q0 4 -16 2" fill="none" stroke="#f1c40f" stroke-width="3.5"/>'),
    "qiang": ('<path d="M14 30 h8 v26 h-8 z" fill="#e0a526"/>'
              '<path d="M24 30 l8 -16 q2 -6 7 -4 q4 2 2 10 l-2 8 h12 q6 0 5 6 l-3 18 q-1 5 -6 5 h-23 z" fill="#ffcc4d" stroke="#e0a526" stroke-width="2"/>'),
}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, body in EMOJI.items():
        svg = f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 64 64" width="64" height="64">{body}</svg>\n'
        (OUT / f"{name}.svg").write_text(svg, encoding="utf-8")
    print(f"wrote {len(EMOJI)} emoji to {OUT}")


if __name__ == "__main__":
    main()
