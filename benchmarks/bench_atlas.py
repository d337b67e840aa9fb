"""Window read vs whole-level decode on an 8000x6000 synthetic-like section (2 um/px, 2048 tiles)."""
import time, tempfile, numpy as np, tifffile
from pathlib import Path
from cytoclip import layout
from cytoclip.atlas import Section
rng = np.random.default_rng(0)
yy, xx = np.mgrid[0:6000, 0:8000]
img = np.stack([(60 + (xx % 97)), (40 + (yy % 131)), np.full_like(xx, 170)], -1).astype(np.uint8)
d = Path(tempfile.mkdtemp()); p = d / "Specimen_1_1.tif"
t = time.perf_counter(); layout.write_pyramid_tiff(p, img, 2.0); tw = time.perf_counter() - t
s = Section(p, None)
t = time.perf_counter()
for i in range(20): s.read_region(int(rng.integers(0, 7700)), int(rng.integers(0, 5700)), 224, 224)
tw224 = (time.perf_counter() - t) / 20
n = s.tiles_decoded / 20
t = time.perf_counter(); full = tifffile.imread(p, level=0); tfull = time.perf_counter() - t
t = time.perf_counter(); r16 = s.read_level(16.0); t16 = time.perf_counter() - t
print(f"write 8000x6000 pyramid: {tw:.2f}s, {p.stat().st_size/1e6:.1f} MB, levels={[ (l.width,l.height,l.mpp) for l in s.levels]}")
print(f"224px window @2um/px: {tw224*1e3:.1f} ms, {n:.1f} tiles decoded/window; full level-0 decode: {tfull*1e3:.0f} ms; ratio {tfull/tw224:.0f}x")
print(f"read_level(16) -> {r16.shape}: {t16*1e3:.0f} ms")
def scan(sec):
    t = time.perf_counter()
    for y in range(0, 6000 - 224, 448):
        for x in range(0, 8000 - 224, 448):
            sec.read_region(x, y, 224, 224)
    return time.perf_counter() - t, sec.tiles_decoded
a = scan(Section(p, None)); b = scan(Section(p, None, tile_cache_mb=0))
print(f"grid scan 13x18 windows: cache {a[0]:.2f}s/{a[1]} decodes, no cache {b[0]:.2f}s/{b[1]} decodes, ratio {b[0]/a[0]:.1f}x")
