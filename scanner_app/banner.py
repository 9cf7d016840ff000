"""Large block letters, colours and bell patterns for the terminal (ANSI, no curses).

Door staff read the answer from a metre away: each answer is a five-line word
on its own colour, and each has its own beep pattern so it can be heard
without looking (a terminal bell, BEL, per beep).
"""

from __future__ import annotations

GLYPHS = {
    "A": [" ### ", "#   #", "#####", "#   #", "#   #"],
    "C": [" ####", "#    ", "#    ", "#    ", " ####"],
    "D": ["#### ", "#   #", "#   #", "#   #", "#### "],
    "E": ["#####", "#    ", "#### ", "#    ", "#####"],
    "F": ["#####", "#    ", "#### ", "#    ", "#    "],
    "G": [" ####", "#    ", "#  ##", "#   #", " ####"],
    "I": ["#####", "  #  ", "  #  ", "  #  ", "#####"],
    "K": ["#   #", "#  # ", "###  ", "#  # ", "#   #"],
    "L": ["#    ", "#    ", "#    ", "#    ", "#####"],
    "M": ["#   #", "## ##", "# # #", "#   #", "#   #"],
    "N": ["#   #", "##  #", "# # #", "#  ##", "#   #"],
    "O": [" ### ", "#   #", "#   #", "#   #", " ### "],
    "P": ["#### ", "#   #", "#### ", "#    ", "#    "],
    "R": ["#### ", "#   #", "#### ", "#  # ", "#   #"],
    "S": [" ####", "#    ", " ### ", "    #", "#### "],
    "T": ["#####", "  #  ", "  #  ", "  #  ", "  #  "],
    "U": ["#   #", "#   #", "#   #", "#   #", " ### "],
    "V": ["#   #", "#   #", "#   #", " # # ", "  #  "],
    "W": ["#   #", "#   #", "# # #", "## ##", "#   #"],
    " ": ["   ", "   ", "   ", "   ", "   "],
}

RESET = "\x1b[0m"
# bold, foreground, background per answer: green admits, yellow warns, red refuses, magenta: other event
STYLES = {
    "admitted": "\x1b[1;97;42m",
    "exited": "\x1b[1;97;44m",
    "duplicate": "\x1b[1;30;43m",
    "invalid": "\x1b[1;97;41m",
    "wrong_event": "\x1b[1;97;45m",
    "void": "\x1b[1;97;41m",
    "refused": "\x1b[1;97;41m",
    "not_inside": "\x1b[1;30;43m",
}
WORDS = {"admitted": "ADMIT", "exited": "OUT", "duplicate": "DUPLICATE", "invalid": "INVALID",
         "wrong_event": "WRONG EVENT", "void": "VOID", "refused": "REFUSED",
         "not_inside": "NOT INSIDE"}
# Beeps per answer, as the gaps (seconds) between BELs: one short beep admits, two mean duplicate,
# three fast beeps refuse (invalid, void), a long double for the wrong event.
BEEPS = {"admitted": [0.0], "exited": [0.0], "duplicate": [0.0, 0.25], "invalid": [0.0, 0.12, 0.12],
         "void": [0.0, 0.12, 0.12], "refused": [0.0, 0.12, 0.12], "wrong_event": [0.0, 0.5],
         "not_inside": [0.0, 0.25]}


def big(word: str) -> list[str]:
    """Five lines of block letters for `word` (letters outside the font are left out)."""
    glyphs = [GLYPHS[ch] for ch in word.upper() if ch in GLYPHS]
    return ["  ".join(g[row] for g in glyphs).replace("#", "█") for row in range(5)]


def render(result: str, width: int = 80) -> str:
    """The answer as a coloured block, padded to `width` columns (the word itself is also in the text)."""
    style = STYLES.get(result, STYLES["invalid"])
    lines = big(WORDS.get(result, result.upper()))
    width = max(width, max(len(line) for line in lines) + 4)
    pad = " " * width
    body = [style + pad + RESET]
    body += [style + ("  " + line).ljust(width) + RESET for line in lines]
    body += [style + pad + RESET]
    return "\n".join(body)
