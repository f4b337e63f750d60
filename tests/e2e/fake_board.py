#!/usr/bin/env python3
# A fake board behind a pty, for tests/e2e/run (from e2e-harness.md appendix B).
# usage: fake_board.py LINK LOG [GROUP] -> LINK points at a /dev/pts/N the guest opens as a tty.
# It keeps its own fd on the slave, so the master never sees EIO when the guest closes and reopens
# the port; the slave is root:GROUP 0660 like a udev-managed serial port.
import grp
import os
import select
import sys
import termios
import tty

link, log = sys.argv[1], sys.argv[2]
group = sys.argv[3] if len(sys.argv) > 3 else "dialout"
m, s = os.openpty()
name = os.ttyname(s)
tty.setraw(s)
try:
    os.chown(name, 0, grp.getgrnam(group).gr_gid)
except KeyError:
    pass
os.chmod(name, 0o660)
tmp = link + ".new"
if os.path.lexists(tmp):
    os.unlink(tmp)
os.symlink(name, tmp)
os.replace(tmp, link)
with open(log, "a", buffering=1) as lf:
    lf.write(f"READY {name}\n")
    buf = b""
    while True:
        r, _, _ = select.select([m], [], [], 1.0)
        if not r:
            continue
        buf += os.read(m, 4096)
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            line = line.strip(b"\r")
            lf.write(f"RX {line!r} speed_const={termios.tcgetattr(s)[4]}\n")
            if line == b"PING":
                os.write(m, b"PONG\r\n")
