#!/usr/bin/env python3
"""Which pages of its own binary a running process has resident, by ELF section and, for .text, by the crate
of the function each page's middle falls in (issue 23: the binary's share of the server's RSS).

Usage: benches/text_pages.py PID [TOP_N]     (as root, or the process' owner: reads /proc/PID/pagemap)
Needs: python3, binutils (readelf, nm).
"""
import bisect, collections, os, re, struct, subprocess, sys
pid = int(sys.argv[1]); binpath = os.path.realpath(f"/proc/{pid}/exe")
# ELF program headers: file offset -> vaddr
out = subprocess.run(["readelf", "-lW", binpath], capture_output=True, text=True).stdout
loads = []
for l in out.splitlines():
    p = l.split()
    if p and p[0] == "LOAD":
        off, va, pa, fs, ms = (int(x, 16) for x in p[1:6]); loads.append((off, va, fs, ms, " ".join(p[6:-1])))
syms = []
nm = subprocess.run(["nm", "-S", "--defined-only", "-C", binpath], capture_output=True, text=True).stdout
for l in nm.splitlines():
    p = l.split(" ", 3)
    if len(p) == 4:
        try: syms.append((int(p[0], 16), int(p[1], 16), p[3]))
        except ValueError: pass
syms.sort(); addrs = [s[0] for s in syms]
secs = []
for l in subprocess.run(["readelf", "-SW", binpath], capture_output=True, text=True).stdout.splitlines():
    m = re.match(r"\s*\[\s*\d+\]\s+(\S+)\s+\S+\s+([0-9a-f]+)\s+([0-9a-f]+)\s+([0-9a-f]+)", l)
    if m: secs.append((int(m.group(2), 16), int(m.group(4), 16), m.group(1)))
def section(va):
    for a, s, n in secs:
        if a <= va < a + s: return n
    return "?"
def crate(name):
    n = name
    for pre in ("<", "_<", "&"):
        n = n.lstrip(pre)
    m = re.match(r"([A-Za-z_][A-Za-z0-9_]*)::", n)
    return m.group(1) if m else n[:30]
maps = [l.split() for l in open(f"/proc/{pid}/maps") if l.rstrip().endswith(binpath)]
pm = open(f"/proc/{pid}/pagemap", "rb")
by_sec = collections.Counter(); by_crate = collections.Counter(); total = 0
for m in maps:
    a, b = (int(x, 16) for x in m[0].split("-")); off = int(m[2], 16)
    for va in range(a, b, 4096):
        pm.seek(va // 4096 * 8); e = struct.unpack("<Q", pm.read(8))[0]
        if not (e >> 63) & 1: continue
        total += 1
        fo = off + (va - a)
        elfva = None
        for lo, lva, fs, ms, fl in loads:
            if lo <= fo < lo + max(fs, ms): elfva = lva + (fo - lo); break
        if elfva is None: by_sec["?"] += 1; continue
        s = section(elfva); by_sec[s] += 1
        if s == ".text":
            # attribute page to the symbol covering its middle
            j = bisect.bisect_right(addrs, elfva + 2048) - 1
            by_crate[crate(syms[j][2]) if j >= 0 else "?"] += 1
print(f"resident pages of {binpath}: {total} ({total*4/1024:.1f} MB)")
for k, v in by_sec.most_common(15): print(f"  {k:24} {v*4/1024:7.2f} MB")
print("text by crate:")
for k, v in by_crate.most_common(int(sys.argv[2]) if len(sys.argv) > 2 else 30): print(f"  {k:30} {v*4/1024:7.2f} MB")
