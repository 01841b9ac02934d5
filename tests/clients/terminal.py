"""Run a command on a pseudo-terminal and keep what its screen shows after each write.

The screen model understands what rich's live display sends (text, CR, LF, cursor up/down,
erase line, colours and cursor visibility, which are ignored): enough to see the rendered
rows the way a user's terminal shows them.
"""

from __future__ import annotations

import codecs
import fcntl
import os
import pty
import re
import select
import struct
import subprocess
import termios
import time
from dataclasses import dataclass, field

_TOKEN = re.compile(r"\x1b\[([?0-9;]*)([A-Za-z])|\x1b\][^\x07]*\x07|\r|\n|[^\x1b\r\n]+")
_WHOLE_ESCAPE = re.compile(r"\x1b\[[?0-9;]*[A-Za-z]|\x1b\][^\x07]*\x07")


@dataclass
class Screen:
    """Rows of text and a cursor; `feed` applies terminal output to them."""

    rows: list[str] = field(default_factory=lambda: [""])
    row: int = 0
    col: int = 0
    pending: str = ""  # an escape sequence cut by the end of a read

    def _put(self, text: str) -> None:
        line = self.rows[self.row].ljust(self.col)
        self.rows[self.row] = line[: self.col] + text + line[self.col + len(text):]
        self.col += len(text)

    def feed(self, data: str) -> None:
        data, self.pending = self.pending + data, ""
        esc = data.rfind("\x1b")
        if esc >= 0 and not _WHOLE_ESCAPE.match(data, esc):
            data, self.pending = data[:esc], data[esc:]
        for m in _TOKEN.finditer(data):
            tok = m.group(0)
            if tok == "\r":
                self.col = 0
            elif tok == "\n":
                self.row += 1
                self.col = 0
                if self.row == len(self.rows):
                    self.rows.append("")
            elif m.group(2):
                n = int(m.group(1)) if m.group(1).isdigit() else None
                kind = m.group(2)
                if kind == "A":
                    self.row = max(0, self.row - (n or 1))
                elif kind == "B":
                    self.row = min(len(self.rows) - 1, self.row + (n or 1))
                elif kind == "K":
                    # 2: whole line; 0 (default): from the cursor to its end.
                    line = self.rows[self.row]
                    self.rows[self.row] = "" if n == 2 else line[: self.col]
                # m (colours), h/l (cursor visibility) change nothing on the rows.
            elif not tok.startswith("\x1b"):
                self._put(tok)

    def text(self) -> str:
        return "\n".join(r.rstrip() for r in self.rows).rstrip("\n")


@dataclass
class PtyRun:
    code: int
    frames: list[str]  # the screen after each chunk the program wrote

    @property
    def final(self) -> str:
        return self.frames[-1] if self.frames else ""


def run_on_pty(
    argv: list[str], env: dict[str, str], columns: int = 120, timeout: float = 60
) -> PtyRun:
    """Run `argv` with stdin/stdout/stderr on a pty of `columns` x 30 and record its screen."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                            close_fds=True)
    os.close(slave)
    screen, frames = Screen(), []
    decode = codecs.getincrementaldecoder("utf-8")(errors="replace").decode
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([master], [], [], 0.1)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the program exited and closed the terminal
                break
            if not chunk:
                break
            screen.feed(decode(chunk))
            frames.append(screen.text())
        else:
            proc.kill()
            raise AssertionError(f"{argv} still running after {timeout}s:\n{screen.text()}")
        return PtyRun(proc.wait(timeout=10), frames)
    finally:
        os.close(master)
