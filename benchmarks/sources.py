import os, sys, tempfile, time
from pathlib import Path
from auditd.sources.framing import LineFramer
from auditd.sources.settings import FileSourceSettings
from auditd.sources.tail import FileTailer
from auditd.sources.replay import ReplaySource

line = b'{"ts":"2026-11-02T10:00:00.000+08:00","app":"crm","host":"crm-web-01","req":"r-00000001","emp":{"id":"E10001","name":"x"},"ip":"10.20.1.5","op":"order.view"}\n'
n = 1_000_000
d = Path(tempfile.mkdtemp())
log = d / "access.log"
with open(log, "wb") as fh:
    block = line * 10000
    for _ in range(n // 10000): fh.write(block)
size = log.stat().st_size
s = FileSourceSettings(name="b", paths=(log,), format="x", use_inotify=False)
t = FileTailer(s, LineFramer(), {}, first_start=True)
start = time.perf_counter(); got = 0
while got < n:
    for b in t.poll(20000): got += len(b)
dt = time.perf_counter() - start
print(f"FileTailer: {n:,} lines ({size/1e6:.0f} MB) in {dt:.2f}s = {n/dt/1e6:.2f} M lines/s")
t.stop()
r = ReplaySource("b", [log], LineFramer())
start = time.perf_counter(); got = sum(len(b) for b in r.batches(20000)); dt = time.perf_counter() - start
print(f"ReplaySource: {got:,} lines in {dt:.2f}s = {got/dt/1e6:.2f} M lines/s")
f = LineFramer(); chunk = line * (1024*1024 // len(line))
best = 0
for _ in range(5):
    start = time.perf_counter(); k = 0
    for _ in range(100): k += len(f.split(chunk, 0)[0])
    best = max(best, k / (time.perf_counter() - start))
print(f"LineFramer.split on 1 MiB chunks of {len(line)}-byte lines: {best/1e6:.1f} M lines/s")
os.remove(log)
